"""Training data from local files: documents, the token cache, and batches for every task.

Pretraining (GPT and BERT):

1. `read_documents` turns files and folders into documents (`documents`).
2. `tokenize_corpus` tokenizes them once into a flat token file in a cache
   folder, keyed by the content of the inputs and of the tokenizer;
   `split_tokens` cuts off the last part for validation (`token_cache`).
3. `CausalLMBatches` packs the token stream into fixed-length blocks for
   next-token prediction; `CausalLMDictBatches` gives them as the trainer's
   dict batches (`causal_lm`).
4. For BERT, `tokenize_documents_for_bert` keeps documents and sentences
   apart, and `BertPretrainingBatches` builds next-sentence pairs with
   dynamic masked-language-model masking (`bert_pairs`).

Fine-tuning (classification, tagging, instructions, input/target pairs):

1. `read_classification`, `read_conll`, `read_instructions` and
   `read_seq2seq` read examples that remember their file and line (`examples`).
2. `LabelSet` numbers the labels; the ``encode_*`` functions tokenize
   (`example_encoding`).
3. `ClassificationBatches`, `TaggingBatches`, `InstructionBatches` and
   `Seq2SeqBatches` pad them into batches (`example_batches`).

Every training iterator is a `ResumableEpochs` (`epochs`): endless, seeded
per epoch, and resumable: ``state()`` after ``k`` batches, then
``restore(state)`` on a fresh iterator, gives the very same batch ``k + 1``
onwards.
"""

from ..training.losses import IGNORE_INDEX
from .bert_pairs import BertPretrainingBatches, split_documents, tokenize_documents_for_bert
from .causal_lm import CausalLMBatches, CausalLMDictBatches
from .corpus_files import CORPUS_SUFFIXES, describe_files, list_corpus_files
from .documents import PathLike, jsonl_records, not_utf8, read_documents, split_sentences
from .epochs import ResumableEpochs, steps_for
from .example_batches import ClassificationBatches, InstructionBatches, Seq2SeqBatches, TaggingBatches
from .example_encoding import (
    PROBLEM_TYPES,
    LabelSet,
    encode_classification,
    encode_instructions,
    encode_seq2seq,
    encode_tagging,
)
from .examples import (
    INSTRUCTION_FORMATS,
    TEXT_COLUMNS,
    ClassificationExample,
    InstructionExample,
    Seq2SeqExample,
    TaggingExample,
    read_classification,
    read_conll,
    read_instructions,
    read_seq2seq,
)
from .token_cache import TokenFile, split_tokens, tokenize_corpus

__all__ = [
    "CORPUS_SUFFIXES",
    "IGNORE_INDEX",
    "INSTRUCTION_FORMATS",
    "PROBLEM_TYPES",
    "TEXT_COLUMNS",
    "BertPretrainingBatches",
    "CausalLMBatches",
    "CausalLMDictBatches",
    "ClassificationBatches",
    "ClassificationExample",
    "InstructionBatches",
    "InstructionExample",
    "LabelSet",
    "PathLike",
    "ResumableEpochs",
    "Seq2SeqBatches",
    "Seq2SeqExample",
    "TaggingBatches",
    "TaggingExample",
    "TokenFile",
    "describe_files",
    "encode_classification",
    "encode_instructions",
    "encode_seq2seq",
    "encode_tagging",
    "jsonl_records",
    "list_corpus_files",
    "not_utf8",
    "read_classification",
    "read_conll",
    "read_documents",
    "read_instructions",
    "read_seq2seq",
    "split_documents",
    "split_sentences",
    "split_tokens",
    "steps_for",
    "tokenize_corpus",
    "tokenize_documents_for_bert",
]
