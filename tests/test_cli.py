"""The mlx-llm command line: help, version and the demo."""

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import mlx_llm
from mlx_llm_cli.main import main


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and mlx_llm.__version__ in result.output
    result = runner.invoke(main, ["demo", "--help"])
    assert result.exit_code == 0 and "--dtype" in result.output


def test_demo_prints_output_shape_on_stdout():
    result = CliRunner().invoke(main, ["demo", "--batch-size", "3", "--target-length", "4", "--vocab-size", "50"])
    assert result.exit_code == 0, result.output
    assert "logits (3, 4, 50)" in result.stdout
    assert "ms" in result.stderr and "ms" not in result.stdout  # timing is a diagnostic


def test_bad_option_exits_with_usage_error():
    result = CliRunner().invoke(main, ["demo", "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2


def test_console_script_is_installed_and_no_top_level_cli_module():
    script = Path(sys.executable).parent / "mlx-llm"  # installed beside this interpreter
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                               check=False, cwd="/")
    assert completed.returncode == 0 and "mlx-llm" in completed.stdout
    probe = subprocess.run([sys.executable, "-c", "import cli"], capture_output=True, cwd="/", check=False)
    assert probe.returncode != 0  # the cli/ folder installs as mlx_llm_cli
