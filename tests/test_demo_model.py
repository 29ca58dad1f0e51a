"""The built-in demo model (mlx_llm/demo_model, linked as weights/demo): it ships
in the package, loads, generates and keeps its measured quality (a golden value
on part of the validation text)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

import mlx_llm
from mlx_llm.demo import demo_model_path
from mlx_llm.loading import load
from mlx_llm.pretrain import evaluate_text
from mlx_llm_cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DEMO = demo_model_path()
VALID = ROOT / "data" / "tinyshakespeare" / "valid.txt"
# `mlx-llm eval weights/demo --data <first 10,000 characters of valid.txt> --dtype float32`, measured when the
# model was trained (weights/train_demo.sh); any change to the model, tokenizer or loading code that alters
# the numbers shows here.
GOLDEN_NATS_PER_CHARACTER = 1.431732



def test_demo_model_ships_inside_the_package():
    assert DEMO == Path(mlx_llm.__file__).resolve().parent / "demo_model"
    # The repository's historical path points at the same files.
    assert (ROOT / "weights" / "demo").resolve() == DEMO.resolve()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        assert (DEMO / name).is_file(), name


def test_demo_model_quality_is_unchanged(tmp_path):
    sample = tmp_path / "valid-head.txt"
    sample.write_text(VALID.read_text(encoding="utf-8")[:10_000], encoding="utf-8")
    model, tokenizer = load(DEMO, dtype="float32")
    metrics = evaluate_text(model, tokenizer, [sample])
    assert metrics["nats_per_character"] == pytest.approx(GOLDEN_NATS_PER_CHARACTER, abs=2e-3)


def test_generate_uses_the_demo_model_by_default():
    result = CliRunner().invoke(main, ["generate", "--prompt", "ROMEO:", "--max-tokens", "24", "--seed", "0"])
    assert result.exit_code == 0, result.output
    text = result.stdout.strip()
    # Shakespeare-like text: words, spaces and punctuation, not byte garbage.
    assert len(text) > 40
    assert sum(c.isalpha() or c.isspace() or c in ",.;:!?'-" for c in text) / len(text) > 0.95
    assert "tokens/s" in result.stderr
    # The demo samples (its generation_config.json); the same seed gives the same text.
    again = CliRunner().invoke(main, ["generate", "--prompt", "ROMEO:", "--max-tokens", "24", "--seed", "0"])
    assert again.stdout == result.stdout
