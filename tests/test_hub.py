"""Tests of mlx_llm.model_files.hub: local paths, the Hugging Face cache and Hub (offline,
through a hand-built cache and a loopback server), safetensors I/O and atomic
output folders."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.model_files.hub import (
    DEFAULT_ALLOW_PATTERNS,
    HubConnectionError,
    ModelAccessError,
    ModelNotFoundError,
    atomic_output_dir,
    copy_tokenizer_files,
    hub_cache_dir,
    read_json,
    resolve_model_path,
)
from mlx_llm.model_files.weight_files import UnsafeCheckpointError, find_weight_files, load_safetensors, save_safetensors

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import FakeHub, commit_hash  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def safetensors_bytes(weights: dict[str, mx.array], tmp_path: Path) -> bytes:
    path = tmp_path / "scratch.safetensors"
    mx.save_safetensors(str(path), weights)
    content = path.read_bytes()
    path.unlink()
    return content


def as_numpy(array: mx.array) -> np.ndarray:
    return np.array(array.astype(mx.float32))


def leftovers(folder: Path) -> list[str]:
    """Hidden or temporary entries that a finished write must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


# ---------------------------------------------------------------------------
# Environment: every test gets its own HF_HOME and never reaches the internet.


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HF_HOME, Hub variables cleared, huggingface_hub's import-time constants made harmless."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    constants = huggingface_hub.constants
    # huggingface_hub reads these once at import; mlx_llm.model_files.hub passes the live values itself, and
    # these patches keep huggingface_hub's own side requests and files inside the test.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    point_constants_at(monkeypatch, "http://127.0.0.1:9")  # the discard port: refused at once
    for name in ("HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "AGENT_HARNESSES_PATH"):
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, str(tmp_path / "hf_private" / name.lower()))
    return home


def point_constants_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point huggingface_hub's import-time endpoint at ``endpoint``.

    ``hf_hub_url`` swaps its ``endpoint`` argument in only for URLs that start with
    ``constants.ENDPOINT``, so the URL template has to move along with it.
    """
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def build_cache(hf_home: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT,
                refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay out a Hugging Face cache entry as huggingface_hub writes it; returns the snapshot folder.

    Offline, ``snapshot_download`` needs only ``refs/<revision>`` (the commit hash, no newline)
    and ``snapshots/<commit>/``; the ``blobs/`` with snapshot symlinks mirror the real layout.
    """
    storage = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = storage / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    return snapshot


# ---------------------------------------------------------------------------
# resolve_model_path: local paths


def test_local_folder_passes_through(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    assert resolve_model_path(folder) == folder
    assert resolve_model_path(str(folder)) == folder


def test_local_folder_with_revision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="revision"):
        resolve_model_path(tmp_path, revision="main")


@pytest.mark.parametrize("name", ["./no-such-model", "~/no-such-model-xyz", "some/deep/no-such-model"])
def test_missing_local_path_raises(name: str, hf_home: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-model") as info:
        resolve_model_path(name)
    assert isinstance(info.value, ModelNotFoundError)
    assert not (hf_home / "hub").exists()  # not mistaken for a repo id


def test_missing_absolute_path_and_path_object_raise(tmp_path: Path, hf_home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="gone"):
        resolve_model_path(str(tmp_path / "gone"))
    with pytest.raises(ModelNotFoundError, match="org/name"):
        resolve_model_path(Path("org/name"))  # a Path is always local
    assert not (hf_home / "hub").exists()


def test_file_instead_of_folder(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="model.safetensors"):
        resolve_model_path(file)


# ---------------------------------------------------------------------------
# resolve_model_path: the Hugging Face cache, offline


def test_offline_cache_resolves(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = build_cache(hf_home, "org/name", {"config.json": b"{}", "model.safetensors": b"w"})
    other = build_cache(hf_home, "org/name", {"config.json": b'{"v": 1}'}, commit=OTHER_COMMIT,
                        refs=("v1",))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported
    assert resolve_model_path("org/name") == snapshot
    assert resolve_model_path("org/name", revision="v1") == other
    assert resolve_model_path("org/name", revision=COMMIT) == snapshot


def test_offline_repo_not_cached(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_cache(hf_home, "org/name", {"config.json": b"{}"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="org/absent") as info:
        resolve_model_path("org/absent")
    assert "HF_HUB_OFFLINE" in str(info.value) and "local model folder" in str(info.value)
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        resolve_model_path("org/name", revision="nope")


def test_cache_location_is_read_at_call_time(tmp_path: Path, hf_home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_cache(hf_home, "org/name", {"config.json": b"{}"})
    second_home = tmp_path / "second_home"
    second = build_cache(second_home, "org/name", {"config.json": b"{}"}, commit=OTHER_COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("org/name") == first
    monkeypatch.setenv("HF_HOME", str(second_home))
    assert resolve_model_path("org/name") == second
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))  # takes precedence over HF_HOME
    assert hub_cache_dir() == hf_home / "hub"
    assert resolve_model_path("org/name") == first


# ---------------------------------------------------------------------------
# resolve_model_path: downloads from a loopback Hub


@pytest.fixture
def fake_hub(tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch):
    weights = safetensors_bytes({"w": mx.arange(4, dtype=mx.float32)}, tmp_path)
    repos = {
        "org/tiny": {
            "main": {
                "config.json": b'{"model_type": "tiny"}',
                "model.safetensors": weights,
                "tokenizer.json": b'{"version": "1.0"}',
                "pytorch_model.bin": b"pickle bytes that must never be fetched",
                "modeling_tiny.py": b"import os",
                "README.md": b"# tiny",
            },
            "v1": {"config.json": b'{"model_type": "tiny", "v": 1}', "model.safetensors": weights},
        },
        "org/gated": {"main": {"config.json": b"{}", "model.safetensors": weights}},
    }
    with FakeHub(repos, gated={"org/gated"}, lifetime_s=60) as hub:
        # Only the live variable: huggingface_hub's constants still point at the discard port
        # (see hf_home), so requests reach this server only if mlx_llm passes the endpoint on.
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def test_download_fetches_only_model_files(fake_hub: FakeHub, hf_home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = resolve_model_path("org/tiny")
    assert folder == hf_home / "hub" / "models--org--tiny" / "snapshots" / commit_hash("org/tiny", "main")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert read_json(folder / "config.json") == {"model_type": "tiny"}
    assert as_numpy(load_safetensors(find_weight_files(folder))["w"]).tolist() == [0, 1, 2, 3]
    fetched = " ".join(fake_hub.paths_requested())
    assert "resolve" in fetched
    for never in ("pytorch_model.bin", "modeling_tiny.py", "README.md"):
        assert never not in fetched

    # The downloaded snapshot is then found offline, without asking the server.
    served = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("org/tiny") == folder
    assert len(fake_hub.requests) == served


def test_download_revision(fake_hub: FakeHub) -> None:
    folder = resolve_model_path("org/tiny", revision="v1")
    assert folder.name == commit_hash("org/tiny", "v1")
    assert read_json(folder / "config.json") == {"model_type": "tiny", "v": 1}


def test_download_allow_patterns(fake_hub: FakeHub) -> None:
    folder = resolve_model_path("org/tiny", allow_patterns=["config.json"])
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    assert "*.safetensors" in DEFAULT_ALLOW_PATTERNS


def test_download_missing_repo(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelNotFoundError, match="org/missing") as info:
        resolve_model_path("org/missing")
    assert "huggingface-cli login" in str(info.value)


def test_download_missing_revision(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelNotFoundError, match="no-such-branch.*org/tiny"):
        resolve_model_path("org/tiny", revision="no-such-branch")


def test_download_gated_repo(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelAccessError, match="org/gated.*gated"):
        resolve_model_path("org/gated")


def test_unreachable_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubConnectionError, match="org/tiny"):
        resolve_model_path("org/tiny")


# ---------------------------------------------------------------------------
# find_weight_files


def test_find_single_file(tmp_path: Path) -> None:
    save_safetensors({"a": mx.zeros(2)}, tmp_path)
    (tmp_path / ".model.safetensors.1234.tmp.safetensors").write_bytes(b"")  # stray temporary
    assert find_weight_files(tmp_path) == [tmp_path / "model.safetensors"]


def test_find_sharded_uses_index(tmp_path: Path) -> None:
    written = save_safetensors({f"t{i}": mx.zeros(4) for i in range(3)}, tmp_path, max_shard_size=16)
    (tmp_path / "consolidated.safetensors").write_bytes(b"not listed in the index")
    assert find_weight_files(tmp_path) == written
    assert len(written) == 3


def test_find_missing_shard(tmp_path: Path) -> None:
    written = save_safetensors({f"t{i}": mx.zeros(4) for i in range(3)}, tmp_path, max_shard_size=16)
    written[1].unlink()
    with pytest.raises(FileNotFoundError, match=written[1].name):
        find_weight_files(tmp_path)


def test_find_index_with_bad_shard_name(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(ValueError, match="x.safetensors"):
        find_weight_files(tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "weights.ckpt"])
def test_find_pickle_only_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / name).write_bytes(b"pickle")
    with pytest.raises(UnsafeCheckpointError) as info:
        find_weight_files(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert name in message and "pickle" in message and "safetensors" in message
    assert "save_pretrained" in message


def test_find_no_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\*\.safetensors"):
        find_weight_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent"):
        find_weight_files(tmp_path / "absent")


# ---------------------------------------------------------------------------
# load_safetensors / save_safetensors


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_round_trip(tmp_path: Path, dtype: mx.Dtype) -> None:
    weights = {
        "embed.weight": (mx.arange(12).reshape(3, 4) / 7).astype(dtype),
        "norm.weight": mx.array([1.5, -2.25]).astype(dtype),
    }
    files = save_safetensors(weights, tmp_path, metadata={"source": "test"})
    loaded, metadata = load_safetensors(files, return_metadata=True)
    assert metadata == {"format": "mlx", "source": "test"}
    assert loaded.keys() == weights.keys()
    for name, array in weights.items():
        assert loaded[name].dtype == dtype
        assert loaded[name].shape == array.shape
        np.testing.assert_array_equal(as_numpy(loaded[name]), as_numpy(array))


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    (file,) = save_safetensors({"w": mx.arange(64, dtype=mx.float32)}, tmp_path)
    content = file.read_bytes()
    file.write_bytes(content[:keep])
    with pytest.raises(ValueError, match="model.safetensors.*(damaged|incomplete)"):
        load_safetensors([file])


def test_load_refuses_pickle_missing_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        load_safetensors([tmp_path / "pytorch_model.bin"])
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_safetensors([tmp_path / "absent.safetensors"])
    first = tmp_path / "a" / "model.safetensors"
    second = tmp_path / "b" / "model.safetensors"
    save_safetensors({"shared": mx.zeros(1), "only_a": mx.zeros(1)}, first.parent)
    save_safetensors({"shared": mx.ones(1)}, second.parent)
    with pytest.raises(ValueError, match="'shared'"):
        load_safetensors([first, second])


def test_sharded_save(tmp_path: Path) -> None:
    # A 4000-byte tensor larger than the 1000-byte limit gets a shard of its own; then seven
    # 400-byte tensors pack two per shard, the last one together with a 20-byte bias.
    weights = {"embed.weight": mx.ones((1000,), dtype=mx.float32)}
    weights.update({f"layers.{i}.weight": mx.full((100,), i, dtype=mx.float32) for i in range(7)})
    weights["final.bias"] = mx.arange(10).astype(mx.bfloat16)
    files = save_safetensors(weights, tmp_path, max_shard_size=1000)

    assert [f.name for f in files] == [f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)]
    index = read_json(tmp_path / "model.safetensors.index.json")
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in weights.values()) == 4000 + 7 * 400 + 20
    assert sorted(index["weight_map"]) == sorted(weights)  # every tensor, exactly once
    shards = [load_safetensors([file]) for file in files]
    assert list(shards[0]) == ["embed.weight"]
    assert sorted(shards[-1]) == ["final.bias", "layers.6.weight"]
    for file, shard in zip(files, shards):
        assert all(index["weight_map"][name] == file.name for name in shard)
        assert sum(a.nbytes for a in shard.values()) <= 1000 or len(shard) == 1

    loaded = load_safetensors(find_weight_files(tmp_path))
    assert loaded.keys() == weights.keys()
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(as_numpy(loaded[name]), as_numpy(array))
    assert leftovers(tmp_path) == []


def test_single_save_replaces_earlier_shards(tmp_path: Path) -> None:
    save_safetensors({f"t{i}": mx.zeros(4) for i in range(3)}, tmp_path, max_shard_size=16)
    (tmp_path / "config.json").write_text("{}")
    files = save_safetensors({"t0": mx.ones(4)}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert find_weight_files(tmp_path) == files


def test_save_rejects_bad_input_without_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="empty"):
        save_safetensors({}, out)
    with pytest.raises(ValueError, match="'step'"):
        save_safetensors({"w": mx.zeros(1)}, out, metadata={"step": 3})
    with pytest.raises(TypeError, match="'w'"):
        save_safetensors({"w": np.zeros(1)}, out)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_safetensors({"w": mx.zeros(1)}, out, max_shard_size=0)
    assert not out.exists()


# ---------------------------------------------------------------------------
# atomic_output_dir, copy_tokenizer_files, read_json


def test_atomic_output_dir_success(tmp_path: Path) -> None:
    out = tmp_path / "converted"
    with atomic_output_dir(out) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".")
        (staging / "config.json").write_text("{}")
        assert not out.exists()
    assert (out / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


def test_atomic_output_dir_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "converted"
    with pytest.raises(RuntimeError, match="conversion failed"):
        with atomic_output_dir(out) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_existing(tmp_path: Path) -> None:
    out = tmp_path / "converted"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_output_dir(out):
            pytest.fail("the block must not run")
    assert [p.name for p in out.iterdir()] == ["old.txt"]

    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("failed midway")
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # old folder intact

    with atomic_output_dir(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


def test_atomic_output_dir_accepts_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    with atomic_output_dir(out) as staging:
        (staging / "a").write_text("a")
    assert [p.name for p in out.iterdir()] == ["a"]


def test_copy_tokenizer_files(hf_home: Path, tmp_path: Path) -> None:
    files = {name: name.encode() for name in (
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
        "generation_config.json", "chat_template.jinja", "config.json", "model.safetensors",
        "pytorch_model.bin")}
    snapshot = build_cache(hf_home, "org/name", files)  # snapshot files are symlinks to blobs
    dst = tmp_path / "out"
    copied = copy_tokenizer_files(snapshot, dst)
    assert copied == ["chat_template.jinja", "generation_config.json", "special_tokens_map.json",
                      "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert sorted(p.name for p in dst.iterdir()) == copied
    for name in copied:
        assert not (dst / name).is_symlink()
        assert (dst / name).read_bytes() == name.encode()


def test_read_json_errors(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "a": 1,\n  "b": }\n')
    with pytest.raises(ValueError, match=r"config.json.*line 3"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


# ---------------------------------------------------------------------------
# End to end: a real (tiny) checkpoint from the loopback Hub through mlx_llm.load and convert


def test_load_and_convert_from_the_hub(tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import transformers
    from tokenizer_fixtures import build_byte_level_bpe

    import mlx_llm
    from mlx_llm.model_files.loading import convert

    source = tmp_path / "source"
    build_byte_level_bpe(source)
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)).eval()
    reference.save_pretrained(source, safe_serialization=True)
    files = {path.name: path.read_bytes() for path in source.iterdir() if path.is_file()}
    files["pytorch_model.bin"] = b"never fetched"
    with FakeHub({"org/gpt2-tiny": {"main": files}}, lifetime_s=60) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        model, tokenizer = mlx_llm.load("org/gpt2-tiny")
        ids = tokenizer.encode("hello world")
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits.numpy()
        np.testing.assert_allclose(np.array(model(mx.array([ids]))), expected, atol=1e-4)
        assert not any("pytorch_model.bin" in path for path in hub.paths_requested())
        convert("org/gpt2-tiny", tmp_path / "converted")
    # Offline: the cached snapshot and the converted folder both load with no server.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline_model, _ = mlx_llm.load("org/gpt2-tiny")
    converted_model, converted_tokenizer = mlx_llm.load(tmp_path / "converted")
    assert converted_tokenizer.encode("hello world") == ids
    np.testing.assert_allclose(np.array(converted_model(mx.array([ids]))), expected, atol=1e-4)
    np.testing.assert_allclose(np.array(offline_model(mx.array([ids]))), expected, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="org/not-cached"):
        mlx_llm.load("org/not-cached")
