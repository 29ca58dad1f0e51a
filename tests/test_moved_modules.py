"""The former module names (before the modules moved into packages) import the
same module objects as the new names."""

import importlib
import subprocess
import sys

import pytest

import mlx_llm
from mlx_llm._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_name_is_the_module_at_its_new_place(old):
    moved = importlib.import_module(f"mlx_llm.{old}")
    new = importlib.import_module(f"mlx_llm.{MOVED[old]}")
    assert moved is new
    assert new.__spec__.name == f"mlx_llm.{MOVED[old]}"  # the module keeps its own spec


def test_old_names_work_in_a_fresh_interpreter_before_the_new_ones():
    # First import through the old names only: from-imports, attribute access, patching one name patches both.
    code = (
        "from mlx_llm.attention import MultiHeadAttention\n"
        "from mlx_llm.distill_students import LAYER_KEYS\n"
        "import mlx_llm.generate as old\n"
        "import mlx_llm.generation.generate as new\n"
        "assert old is new and old.__name__ == 'mlx_llm.generation.generate'\n"
        "old.context_length = 'patched'\n"
        "assert new.context_length == 'patched'\n"
        "from mlx_llm.blocks.attention import MultiHeadAttention as same\n"
        "assert same is MultiHeadAttention\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_training_package_answers_the_former_training_module_names():
    from mlx_llm.training import OptimizationConfig, Trainer, TrainingConfig
    from mlx_llm.training import optimization, trainer

    assert Trainer is trainer.Trainer
    assert TrainingConfig is optimization.TrainingConfig and OptimizationConfig is optimization.OptimizationConfig
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        mlx_llm.training.NoSuchName


def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mlx_llm.no_such_module")
