"""Training: the loop (`trainer`), its settings (`optimization`), run
checkpoints (`checkpoints`), pure losses (`losses`), the objectives that
compose them (`objectives`), evaluation metrics (`metrics`) and LoRA
adapters (`lora`).

``from mlx_llm.training import Trainer`` (and every other name the former
``mlx_llm/training.py`` module had) keeps working: those names are read from
`trainer` when first asked for, so importing one submodule of this package
does not import the trainer.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("checkpoints", "lora", "losses", "metrics", "objectives", "optimization", "trainer")


def __getattr__(name: str):
    if name.startswith("_") or name in _SUBMODULES:  # the import system asking for a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    trainer = importlib.import_module(f"{__name__}.trainer")
    try:
        return getattr(trainer, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
