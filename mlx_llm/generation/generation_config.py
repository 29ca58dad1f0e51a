"""A checkpoint's own generation settings (``generation_config.json``) and how
explicit options combine with them.

`generate` / `stream_generate` take explicit settings only; the command line,
the server (and any script that wants the checkpoint's settings) fill the
options a user left unset from `GenerationDefaults` with
`resolve_sampling_config`, which gives one `SamplingConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..model_files.hub import read_json
from .sampling import SAMPLING_BOUNDS, SamplingConfig

GENERATION_CONFIG = "generation_config.json"

# What transformers' generate() uses for keys a generation_config.json leaves out
# (GenerationConfig._get_default_generation_params): sampling is off unless
# do_sample is true, and sampling keeps the 50 most likely tokens.
TRANSFORMERS_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}
# Without a generation_config.json: greedy decoding, every filter off.
BUILT_IN_DEFAULTS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}
DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class GenerationDefaults:
    """The sampling settings a checkpoint ships, as transformers reads them.

    Attributes:
        source: The ``generation_config.json`` they come from; ``None`` when
            the checkpoint has none (every other field is then ``None``).
        do_sample: Sample (``True``) or decode greedily; transformers treats
            a missing value as ``False``.
        temperature, top_k, top_p, min_p, repetition_penalty: As in the
            file; ``None`` where it leaves them out.
        max_new_tokens: Most tokens to generate, if the file says.
        eos_token_ids: The file's ``eos_token_id`` (an int or a list). The
            tokenizer already stops on these (`Tokenizer.eos_token_ids`).
    """

    source: Path | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    eos_token_ids: tuple[int, ...] = ()


# key -> (type, check, what the check requires): the sampling options' own bounds, and max_new_tokens.
_CHECKS = {
    **{key: (int if key == "top_k" else float, *bounds) for key, bounds in SAMPLING_BOUNDS.items()},
    "max_new_tokens": (int, lambda v: v >= 1, ">= 1"),
}


def _value(config: dict, key: str, path: Path):
    value = config.get(key)
    if value is None:
        return None
    kind, check, requirement = _CHECKS[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind is int and not float(value).is_integer()) or not math.isfinite(value) or not check(value):
        raise ValueError(
            f"{path}: {key} must be {'an integer' if kind is int else 'a finite number'} {requirement}, "
            f"got {value!r}; fix or delete the file"
        )
    return kind(value)


def _eos_ids(value, path: Path) -> tuple[int, ...]:
    values = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{path}: eos_token_id must be a token id or a list of them, got {value!r}")
    return tuple(values)


def read_generation_defaults(folder: str | Path) -> GenerationDefaults:
    """The ``generation_config.json`` of a model folder.

    Args:
        folder: A local model folder (`mlx_llm.model_files.hub.resolve_model_path`).

    Returns:
        Its `GenerationDefaults`; empty ones (``source`` ``None``) when the
        folder has no such file.

    Raises:
        ValueError: the file is not a JSON object or holds an invalid value.
    """
    path = Path(folder) / GENERATION_CONFIG
    if not path.is_file():
        return GenerationDefaults()
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object; fix or delete it")
    do_sample = config.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ValueError(f"{path}: do_sample must be true or false, got {do_sample!r}")
    return GenerationDefaults(
        source=path,
        do_sample=do_sample,
        eos_token_ids=_eos_ids(config.get("eos_token_id"), path),
        **{key: _value(config, key, path) for key in _CHECKS},
    )


def resolve_sampling_config(
    defaults: GenerationDefaults,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
) -> tuple[int, SamplingConfig]:
    """The settings of one run: each option given wins; the others come from
    the checkpoint, else from the built-in defaults.

    A checkpoint with a ``generation_config.json`` is read as transformers
    reads it: unless ``do_sample`` is true it decodes greedily (whatever its
    temperature), and keys it leaves out take transformers' defaults
    (temperature 1, top_k 50). A checkpoint without one decodes greedily
    with every filter off. ``temperature=0`` always means greedy.

    Args:
        defaults: The checkpoint's settings (`read_generation_defaults`).
        max_tokens, temperature, top_k, top_p, min_p, repetition_penalty:
            The options given explicitly; ``None`` for "not given".

    Returns:
        ``(max_tokens, sampling)`` for `stream_generate` (``max_tokens=``, ``sampling=``).

    Raises:
        SamplingError: a given option out of its range (`SamplingConfig`).
    """
    if defaults.source is None:
        base = dict(BUILT_IN_DEFAULTS)
    else:
        base = {key: getattr(defaults, key) if getattr(defaults, key) is not None else value
                for key, value in TRANSFORMERS_DEFAULTS.items()}
        if not defaults.do_sample:
            base["temperature"] = 0.0
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
             "repetition_penalty": repetition_penalty}
    sampling = SamplingConfig(**{key: base[key] if value is None else value for key, value in given.items()})
    if max_tokens is None:
        max_tokens = defaults.max_new_tokens if defaults.max_new_tokens is not None else DEFAULT_MAX_TOKENS
    return max_tokens, sampling


def resolve_sampling(defaults: GenerationDefaults, *options, **keywords) -> dict:
    """`resolve_sampling_config` (the same arguments) as keywords for `stream_generate`:
    ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``
    (the form from before `SamplingConfig` travelled whole; kept for scripts)."""
    max_tokens, sampling = resolve_sampling_config(defaults, *options, **keywords)
    return {"max_tokens": max_tokens, **{key: getattr(sampling, key) for key in BUILT_IN_DEFAULTS}}
