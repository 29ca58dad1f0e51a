"""The former module names of modules that moved into packages.

``import mlx_llm.generate``, ``from mlx_llm.attention import
MultiHeadAttention`` and the like keep working: a finder on ``sys.meta_path``
answers each old name with the module at its new place (the same module
object, so patching either name patches both). ``mlx_llm.training`` is a
package now and answers the old names itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# Old name (under mlx_llm) -> new name (under mlx_llm).
MOVED = {
    "attention": "blocks.attention",
    "masks": "blocks.masks",
    "cache": "blocks.cache",
    "positions": "blocks.positions",
    "feed_forward": "blocks.feed_forward",
    "layers": "blocks.layers",
    "transformer": "blocks.transformer",
    "heads": "blocks.heads",
    "norms": "blocks.norms",
    "moe": "blocks.moe",
    "model_output": "blocks.model_output",
    "backend": "cpu.backend",
    "cpu_tuning": "cpu.tuning",
    "fast_math": "cpu.fast_math",
    "optimization": "training.optimization",
    "checkpoints": "training.checkpoints",
    "losses": "training.losses",
    "objectives": "training.objectives",
    "metrics": "training.metrics",
    "lora": "training.lora",
    "hub": "model_files.hub",
    "weight_files": "model_files.weight_files",
    "loading": "model_files.loading",
    "gguf": "model_files.gguf",
    "gguf_loading": "model_files.gguf_loading",
    "gguf_tokenizer": "model_files.gguf_tokenizer",
    "mlx_lm_layout": "model_files.mlx_lm_layout",
    "export": "model_files.export",
    "run_folders": "model_files.run_folders",
    "demo": "model_files.demo",
    "generate": "generation.generate",
    "sampling": "generation.sampling",
    "stopping": "generation.stopping",
    "chat": "generation.chat",
    "generation_config": "generation.generation_config",
    "distill": "distillation.distill",
    "distill_objective": "distillation.objective",
    "distill_students": "distillation.students",
    "distill_targets": "distillation.targets",
    "distill_tasks": "distillation.tasks",
    "corpus_files": "data.corpus_files",
    "tokenizer": "tokenization",
    "finetune_data": "data",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``mlx_llm.<old>`` as the module ``mlx_llm.<MOVED[old]>``."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.partition(".")
        if package != "mlx_llm" or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(f"mlx_llm.{MOVED[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The import machinery set the old name's spec on the module: give it back its own.
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
