"""The mlx-llm command line: help, version and the demo."""

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import mlx_llm
from mlx_llm_cli.main import main


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and mlx_llm.__version__ in result.output
    result = runner.invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "--dtype" in result.output


def test_demo_prints_output_shape_on_stdout():
    result = CliRunner().invoke(main, ["demo", "--batch-size", "3", "--target-length", "4", "--vocab-size", "50"])
    assert result.exit_code == 0, result.output
    assert "logits (3, 4, 50)" in result.stdout
    assert "ms" in result.stderr and "ms" not in result.stdout  # timing is a diagnostic


def test_bad_option_exits_with_usage_error():
    result = CliRunner().invoke(main, ["demo", "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2


def test_console_script_is_installed_and_no_top_level_cli_module():
    script = Path(sys.executable).parent / "mlx-llm"  # installed beside this interpreter
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                               check=False, cwd="/")
    assert completed.returncode == 0 and "mlx-llm" in completed.stdout
    probe = subprocess.run([sys.executable, "-c", "import cli"], capture_output=True, cwd="/", check=False)
    assert probe.returncode != 0  # the cli/ folder installs as mlx_llm_cli


def _tiny_gpt2(path):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=48,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)


def test_convert_and_info_commands(tmp_path):
    import json

    _tiny_gpt2(tmp_path / "hf")
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    # 2 layers x (4*32*32 + 4*32 attention + 2*32*128 + 128 + 32 mlp + 4*32 norms) + embeddings + final norm
    expected = 2 * (4 * 32 * 32 + 4 * 32 + 2 * 32 * 128 + 128 + 32 + 4 * 32) + 96 * 32 + 48 * 32 + 2 * 32
    assert f"{expected:,}" in result.stdout and "GPT2LMHeadModel" in result.stdout
    assert "context length  48" in result.stdout

    out = tmp_path / "q8"
    result = runner.invoke(main, ["convert", str(tmp_path / "hf"), "--out", str(out), "--quantize", "--bits", "8",
                                  "--group-size", "32"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and "MB/s" in result.stderr
    details = json.loads(runner.invoke(main, ["info", str(out), "--json"]).stdout)
    assert details["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert details["parameters"] == expected and details["mlx_llm_format"] is True

    # Existing output: refused, exit 2, untouched.
    result = runner.invoke(main, ["convert", str(tmp_path / "hf"), "--out", str(out)])
    assert result.exit_code == 2 and "overwrite" in result.output
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8


def test_commands_report_bad_input_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["convert", str(tmp_path), "--out", str(tmp_path / "o"), "--bits", "8"])
    assert result.exit_code == 2 and "--quantize" in result.output
    (tmp_path / "config.json").write_text('{"model_type": "rwkv"}')
    result = runner.invoke(main, ["info", str(tmp_path)])
    assert result.exit_code == 2 and "unsupported model_type 'rwkv'" in result.output
