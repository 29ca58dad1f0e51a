"""File and Hugging Face Hub I/O for checkpoints: resolve and download model
folders, JSON files, output folders written atomically, tokenizer side files.
Weight files (finding, loading and saving safetensors) are `mlx_llm.model_files.weight_files`.
No model code lives here.

Environment variables (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_ENDPOINT``) are read on every call, not at import, and passed to
``huggingface_hub`` explicitly: ``huggingface_hub`` itself reads them once when
it is first imported, so a later change would otherwise go unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .run_folders import Inputs, check_not_an_input

# What `resolve_model_path` downloads from a Hub repo by default: configs,
# safetensors weights and tokenizer files. Pickle weights (*.bin, *.pt) and
# remote code (*.py) are never fetched.
DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.model",  # sentencepiece
    "*.txt",  # vocab.txt, merges.txt
    "*.tiktoken",
    "*.jinja",  # chat templates
)


# Files that hold pickled weights: loading them can run arbitrary code.
PICKLE_PATTERNS: tuple[str, ...] = (
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
)

# Side files a converted model folder needs next to its weights and config.
TOKENIZER_FILE_NAMES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
TOKENIZER_FILE_PATTERNS: tuple[str, ...] = ("*.model", "*.tiktoken")

_DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


class ModelNotFoundError(FileNotFoundError):
    """A model path or Hub repo (or revision of it) could not be found."""


class ModelAccessError(PermissionError):
    """A Hub repo exists but the current user may not download it (gated or private)."""


class HubConnectionError(ConnectionError):
    """The Hub could not be reached and the model is not in the local cache."""


# ---------------------------------------------------------------------------
# JSON


def read_json(path: str | Path) -> Any:
    """Read a JSON file.

    Args:
        path: The file to read (UTF-8).

    Returns:
        The parsed JSON value.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not valid UTF-8 JSON; the message gives the
            line and column of the error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"JSON file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not a UTF-8 text file ({error}); it may be damaged, download or write it again"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}; "
            "fix the file or download it again"
        ) from None


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON, atomically (temporary file, then rename).

    Args:
        data: A JSON-serializable value.
        path: Destination file; its folder must exist.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"  # fails before any file is touched
    with _temporary_file_for(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    return path


@contextlib.contextmanager
def _temporary_file_for(path: Path) -> Iterator[Path]:
    """A hidden temporary name next to ``path``, removed unless the caller renamed it."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Local folders and the Hugging Face Hub


def resolve_model_path(
    path_or_repo: str | Path,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Return the local folder of a model, downloading it from the Hub if needed.

    An existing local folder is returned as is. Anything that looks like a
    local path (a ``Path`` object, an absolute path, one starting with ``.`` or
    ``~``, or one with more than one separator) must exist. Anything else is a
    Hugging Face repo id (``"org/name"``), fetched with
    ``huggingface_hub.snapshot_download`` into the Hugging Face cache
    (``HF_HOME``/``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` only the cache is
    used. ``HF_ENDPOINT`` selects another Hub server.

    Args:
        path_or_repo: A local model folder or a Hub repo id.
        revision: Branch, tag or commit hash of a Hub repo (default: the
            repo's default branch). Not allowed with a local folder.
        allow_patterns: Glob patterns of the repo files to download; the
            default (`DEFAULT_ALLOW_PATTERNS`) fetches configs, safetensors
            weights and tokenizer files, never pickle weights. Pass ``["*"]``
            for everything.

    Returns:
        The model folder (for a Hub repo, its snapshot folder in the cache).

    Raises:
        ModelNotFoundError: The local path does not exist, the repo or
            revision does not exist on the Hub, or (offline) it is not cached.
        ModelAccessError: The repo is gated or private and the user has no access.
        HubConnectionError: The Hub cannot be reached and the model is not cached.
        NotADirectoryError: The local path is a file, not a folder.
    """
    text = str(path_or_repo).strip()
    if not text:
        raise ValueError("model path is empty; pass a local model folder or a Hugging Face repo id 'org/name'")
    local = Path(text).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} was given for the local folder {local}; a revision applies only "
                "to Hugging Face repo ids, so drop it or check out that revision into the folder"
            )
        return local
    if local.exists():
        raise NotADirectoryError(
            f"{local} is a file; pass the model folder that holds config.json and the weights"
        )
    if isinstance(path_or_repo, Path) or _looks_like_local_path(text):
        raise ModelNotFoundError(
            f"model folder {text} does not exist; check the path, or pass a Hugging Face repo id "
            "of the form 'org/name'"
        )
    return _download_snapshot(text, revision, allow_patterns)


def _looks_like_local_path(text: str) -> bool:
    """Whether ``text`` is meant as a filesystem path rather than an ``org/name`` repo id."""
    if os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text:
        return True
    return text.count("/") > 1  # a repo id has exactly one: "org/name"


def _env_is_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE_VALUES


def hub_offline() -> bool:
    """Whether Hub downloads are disabled (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set), read now."""
    return _env_is_true("HF_HUB_OFFLINE") or _env_is_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, from the environment as it is now.

    Returns:
        ``HF_HUB_CACHE`` if set, else ``$HF_HOME/hub`` (``HF_HOME`` defaulting to
        ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``).
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_endpoint() -> str:
    """The Hub server URL: ``HF_ENDPOINT`` as it is now, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def _download_snapshot(repo_id: str, revision: str | None, allow_patterns: list[str] | None) -> Path:
    """Call ``snapshot_download`` and turn its errors into ones that say what to do."""
    # Imported here: huggingface_hub is slow to import and only needed for Hub ids.
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    cache_dir = hub_cache_dir()
    endpoint = hub_endpoint()
    patterns = list(DEFAULT_ALLOW_PATTERNS if allow_patterns is None else allow_patterns)
    at_revision = f" at revision {revision!r}" if revision is not None else ""
    local_hint = "or pass the path of a local model folder"
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            cache_dir=cache_dir,
            endpoint=endpoint,
            local_files_only=offline,
        )
    except HFValidationError as error:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither an existing local folder nor a valid Hugging Face repo id "
            f"('org/name'): {error}. Check the name, {local_hint}"
        ) from None
    except GatedRepoError as error:  # before RepositoryNotFoundError, its parent class
        raise ModelAccessError(
            f"{repo_id!r} is a gated repo: accept its terms on {endpoint}/{repo_id}, then log in with "
            "`huggingface-cli login` (or set HF_TOKEN) as a user with access"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(
            f"revision {revision!r} of {repo_id!r} does not exist on the Hub ({endpoint}); check the "
            "branch, tag or commit hash, or leave the revision unset for the default branch"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local folder and no repo of that name was found on the Hugging Face Hub "
            f"({endpoint}). Check the name (the form is 'org/name'); if the repo is private, log in with "
            f"`huggingface-cli login` (or set HF_TOKEN); {local_hint}"
        ) from error
    except LocalEntryNotFoundError as error:
        # Raised when the Hub was not asked (offline) or could not be reached, and the cache lacks the files.
        cause = error.__cause__
        incomplete = type(error).__name__ == "IncompleteSnapshotError"
        if offline or isinstance(cause, OfflineModeIsEnabled):
            what = "is only partly" if incomplete else "is not"
            raise ModelNotFoundError(
                f"{repo_id!r}{at_revision} {what} in the local Hugging Face cache ({cache_dir}) and "
                "downloads are disabled by HF_HUB_OFFLINE; unset HF_HUB_OFFLINE to download it, point "
                f"HF_HOME at a cache that has it, {local_hint}"
                + (f" ({error})" if incomplete else "")
            ) from error
        raise HubConnectionError(
            f"could not reach the Hugging Face Hub at {endpoint} to download {repo_id!r}{at_revision}, and "
            f"it is not (completely) in the local cache ({cache_dir}). Check your network connection and "
            f"HF_ENDPOINT, {local_hint}. Cause: {cause or error}"
        ) from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelAccessError(
                f"the Hub refused access to {repo_id!r} (HTTP {status}); log in with `huggingface-cli login` "
                "(or set HF_TOKEN) as a user with access to the repo"
            ) from error
        raise HubConnectionError(
            f"the Hugging Face Hub at {endpoint} failed while downloading {repo_id!r}{at_revision} "
            f"(HTTP {status}); try again later, {local_hint}. Cause: {error}"
        ) from error
    except Exception as error:
        if _is_network_error(error):
            raise HubConnectionError(
                f"network error while downloading {repo_id!r}{at_revision} from {endpoint}: {error}. "
                f"Check your connection and HF_ENDPOINT and try again, {local_hint}"
            ) from error
        raise
    return Path(folder)


def _is_network_error(error: BaseException) -> bool:
    """Connection-level failures of the HTTP client huggingface_hub uses (httpx or requests)."""
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    package = type(error).__module__.split(".")[0]
    return package in {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


# ---------------------------------------------------------------------------
# Output folders and side files


def check_output_dir(out: str | Path, overwrite: bool = False, inputs: Inputs | None = None) -> Path:
    """Check that `atomic_output_dir` may write ``out``, before any costly work.

    Args:
        out: The final folder.
        overwrite: Whether an existing non-empty ``out`` may be replaced.
        inputs: What the command reads (`mlx_llm.model_files.run_folders.check_not_an_input`):
            ``out`` may not be, hold or lie inside one of them, even with ``overwrite``.

    Returns:
        ``out`` as a ``Path`` (``~`` expanded).

    Raises:
        FileExistsError: ``out`` exists and is non-empty (without
            ``overwrite``), or is a file.
        ValueError: ``out`` is the working folder or one of its parents, or an input.
    """
    out = Path(out).expanduser()
    check_not_an_input(out, inputs)
    # The folder is built beside ``out`` and renamed into place, which cannot be done to the
    # working folder or one that holds it (``.``, ``..``): the shell would be left in a removed folder.
    if out.name in ("", ".", "..") or out.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise ValueError(
            f"output folder {out} is the current folder or holds it; name a new folder inside it instead"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is a file, not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {out} already exists and is not empty; pass overwrite=True "
            "(--overwrite on the command line) to replace it, or choose another folder"
        )
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, inputs: Inputs | None = None) -> Iterator[Path]:
    """Build an output folder under a temporary name; move it into place on success.

    The block writes into a hidden sibling folder of ``out`` (same parent, so
    the final rename never crosses filesystems). When the block finishes, that
    folder becomes ``out``; if it raises, the temporary folder is removed and
    ``out`` is left as it was.

    Args:
        out: The final folder.
        overwrite: Replace an existing non-empty ``out``; the old folder is
            removed only after the new one is complete.
        inputs: What the block reads, which ``out`` may not be (`check_output_dir`).

    Yields:
        The temporary folder to write into.

    Raises:
        FileExistsError, ValueError: as `check_output_dir`.
    """
    out = check_output_dir(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = out.with_name(f".{out.name}.tmp-{token}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    try:
        if out.exists():
            retired = out.with_name(f".{out.name}.old-{token}")
            os.replace(out, retired)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(retired, out)  # put the old folder back
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer and generation side files of a model folder.

    Copies those of `TOKENIZER_FILE_NAMES` and `TOKENIZER_FILE_PATTERNS`
    (sentencepiece ``*.model``, ``*.tiktoken``) that exist in ``src``.
    Symbolic links (as in the Hugging Face cache) are followed, so ``dst``
    gets real files. Each file is written under a temporary name and renamed.

    Args:
        src: The source model folder.
        dst: The destination folder, created if missing.

    Returns:
        The names of the files copied, sorted.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source model folder {src} does not exist or is not a folder")
    names = {name for name in TOKENIZER_FILE_NAMES if (src / name).is_file()}
    names |= {
        path.name
        for pattern in TOKENIZER_FILE_PATTERNS
        for path in src.glob(pattern)
        if path.is_file() and not path.name.startswith(".")
    }
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(names):
        with _temporary_file_for(dst / name) as temporary:
            shutil.copyfile(src / name, temporary)
            os.replace(temporary, dst / name)
    return sorted(names)
