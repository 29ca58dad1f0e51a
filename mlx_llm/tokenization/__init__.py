"""Tokenization: Hugging Face tokenizer folders, read and reproduced on top of `tokenizers` and SentencePiece.

Modules:
    files: which files a folder holds and what its configs say (`read_tokenizer_folder`).
    backends: the `tokenizers` and SentencePiece backends, the legacy vocabulary
        builders, and the per-token byte plans streaming relies on.
    chat_template: compiling and rendering chat templates (`ChatTemplateError`).
    tokenizer: `Tokenizer`, the one interface the rest of the library uses.
    detokenizer: `StreamingDetokenizer`, text of generated ids as they arrive.
"""

from .backends import TokenizedText
from .chat_template import ChatTemplateError
from .detokenizer import StreamingDetokenizer
from .files import SENTENCEPIECE_FILES, SPECIAL_TOKEN_NAMES
from .tokenizer import PADDING_STRATEGIES, TRUNCATION_STRATEGIES, Tokenizer

__all__ = [
    "PADDING_STRATEGIES",
    "SENTENCEPIECE_FILES",
    "SPECIAL_TOKEN_NAMES",
    "TRUNCATION_STRATEGIES",
    "ChatTemplateError",
    "StreamingDetokenizer",
    "TokenizedText",
    "Tokenizer",
]
