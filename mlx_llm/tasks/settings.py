"""A fine-tuning run's record: how it reads, encodes and scores its data, and what it produced.

`RunSettings` is written to the run folder as ``finetune.json`` and read back
as itself (`RunSettings.from_json`), so that ``predict``, ``evaluate``,
``distill`` and ``export`` read data exactly as the run did. The JSON is flat,
with the keys earlier versions wrote: their run folders still read, keys a
newer version adds are kept in ``extra`` (and written back), and keys an older
version lacks take the defaults below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..data import LabelSet
from ..model_files.hub import read_json, write_json

RUN_FILE = "finetune.json"
COLUMN_SETTINGS = ("text_column", "text_pair_column", "label_column")
# Written only when set (earlier versions wrote them only then).
_OPTIONAL_KEYS = ("quantization", "fused_from", "distilled_from")


@dataclass
class RunSettings:
    """What a fine-tuned run knows about its task and data.

    Attributes:
        task: The task's registry name (`mlx_llm.tasks.get_task`).
        problem: Classification: ``"single_label"``, ``"multi_label"`` or ``"regression"``.
        scheme: Tagging: ``"IOB2"`` or ``"IOBES"``.
        labels: Label (or tag) names in id order; ``None`` for tasks without labels.
        max_length: Longest tokenized input (and seq2seq target).
        text_column, text_pair_column, label_column: Where the task's reader
            finds its fields (seq2seq: input and target).
        mask_prompt: Instruction tuning: no loss on prompt tokens.
        base_model: The pretrained model the run started from.
        lora: The `LoRAConfig` as a dict, or ``None`` for a full run.
        quantization: ``{"group_size", "bits"}`` of a quantized frozen base.
        metrics: Validation metrics of the kept weights.
        best: ``{"step", "metric", "value"}`` of the kept weights.
        steps, num_parameters, trainable_parameters: Of the training run.
        fused_from, distilled_from: The run a fused or distilled folder came from.
        extra: Keys this version does not know (written by a newer one), kept as they are.
    """

    task: str
    problem: str | None = None
    scheme: str | None = None
    labels: list[str] | None = None
    max_length: int = 128
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = "label"
    mask_prompt: bool = True
    base_model: str | None = None
    lora: dict | None = None
    quantization: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict | None = None
    steps: int | None = None
    num_parameters: int | None = None
    trainable_parameters: int | None = None
    fused_from: str | None = None
    distilled_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def label_set(self) -> LabelSet | None:
        """The run's labels as a `LabelSet` (``None`` when the task has none)."""
        return None if self.labels is None else LabelSet(self.labels)

    def with_columns(self, columns: dict[str, str | None] | None, allowed: tuple[str, ...]) -> RunSettings:
        """These settings with the column names ``columns`` gives (``None`` values keep the run's).

        Args:
            columns: ``{"text_column": ..., "text_pair_column": ..., "label_column": ...}``.
            allowed: The column settings this run's task reads.

        Raises:
            ValueError: an unknown setting, or one the task does not read.
        """
        chosen = {}
        for name, value in (columns or {}).items():
            if name not in COLUMN_SETTINGS:
                raise ValueError(f"unknown column setting {name!r}; choose from {COLUMN_SETTINGS}")
            if value is None:
                continue
            if name not in allowed:
                reads = ", ".join(f"--{column.replace('_', '-')}" for column in allowed) or "no column options"
                raise ValueError(f"{name} (--{name.replace('_', '-')}) does not apply to {self.task} runs "
                                 f"(they read {reads}); this run's task is {self.task}")
            chosen[name] = value
        return replace(self, **chosen)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON record (``extra`` keys beside the known ones)."""
        record = {key: value for key, value in asdict(self).items() if key != "extra"}
        for key in _OPTIONAL_KEYS:
            if record[key] is None:
                del record[key]
        return {**self.extra, **record}

    @classmethod
    def from_dict(cls, record: dict[str, Any], source: str = "the run record") -> RunSettings:
        """Settings from a record `to_dict` (or an earlier version) wrote.

        Raises:
            ValueError: the record is not an object or names no task.
        """
        if not isinstance(record, dict) or not isinstance(record.get("task"), str):
            raise ValueError(f"{source} is not a fine-tuning run record (a JSON object with a \"task\"); "
                             "fine-tune the model again with `mlx-llm finetune`")
        known = {item.name for item in fields(cls)} - {"extra"}
        extra = {key: value for key, value in record.items() if key not in known}
        return cls(**{key: value for key, value in record.items() if key in known}, extra=extra)

    def to_json(self, folder: str | Path) -> Path:
        """Write ``finetune.json`` into ``folder`` (atomically)."""
        return write_json(self.to_dict(), Path(folder) / RUN_FILE)

    @classmethod
    def from_json(cls, folder: str | Path) -> RunSettings:
        """The settings of the run in ``folder``.

        Raises:
            FileNotFoundError: naming the folder, when it is not a fine-tuning run.
        """
        path = Path(folder) / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {RUN_FILE}: it is not a fine-tuned model folder (made by `mlx-llm finetune`)"
            )
        return cls.from_dict(read_json(path), str(path))
