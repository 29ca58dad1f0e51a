"""The distribution's file list matches the source tree: every package goes into the
wheel and the built-in demo model goes with it. (.ci/run also builds the wheel,
installs it outside the clone and runs it; this catches a stale list early.)"""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# The demo's training record: in the repository for reference, not needed to run it.
NOT_SHIPPED = {"metrics.jsonl", "loss_curve.png"}


def packages_in(folder: Path, name: str) -> set[str]:
    return {
        ".".join((name, *init.parent.relative_to(folder).parts))
        for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_is_listed():
    found = packages_in(ROOT / "mlx_llm", "mlx_llm") | packages_in(ROOT / "cli", "mlx_llm_cli")
    assert set(SETUPTOOLS["packages"]) == found
    assert SETUPTOOLS["package-dir"] == {"mlx_llm_cli": "cli"}


def test_the_demo_model_is_package_data():
    listed = {Path(pattern) for pattern in SETUPTOOLS["package-data"]["mlx_llm"]}
    demo = ROOT / "mlx_llm" / "demo_model"
    present = {path.relative_to(ROOT / "mlx_llm") for path in demo.iterdir() if path.is_file()}
    # Every file the model needs is shipped, and every shipped name exists.
    assert {path for path in present if path.name not in NOT_SHIPPED} == listed
