"""The tokenizer's old home, kept so that ``from mlx_llm.tokenizer import ...`` keeps working.

The code lives in `mlx_llm.tokenization`; import from there in new code.
"""

from .tokenization import *  # noqa: F403 (the public names: Tokenizer, ChatTemplateError, ...)
from .tokenization import __all__  # noqa: F401

# Private names other code imported from this module before the split.
from .tokenization.backends import SentencePieceBackend as _SentencePieceBackend  # noqa: F401
from .tokenization.backends import TokenizersBackend as _TokenizersBackend  # noqa: F401
from .tokenization.backends import byte_level_table as _byte_level_table  # noqa: F401
