"""Fine-tuning data's old home, kept so that ``from mlx_llm.finetune_data import ...`` keeps working.

The code lives in `mlx_llm.data` (`examples`, `example_encoding`, `example_batches`); import from there in new code.
"""

from .data import (  # noqa: F401
    IGNORE_INDEX,
    INSTRUCTION_FORMATS,
    PROBLEM_TYPES,
    TEXT_COLUMNS,
    ClassificationBatches,
    ClassificationExample,
    InstructionBatches,
    InstructionExample,
    LabelSet,
    PathLike,
    TaggingBatches,
    TaggingExample,
    encode_classification,
    encode_instructions,
    encode_tagging,
    jsonl_records,
    not_utf8,
    read_classification,
    read_conll,
    read_instructions,
)
