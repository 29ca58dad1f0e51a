"""cli/blas.py: when mlx-llm re-runs itself with MKL preloaded (a pure decision), the line that says a command
runs on the reference BLAS, and both in a real process."""

import os
import platform
import subprocess
import sys

import pytest

from mlx_llm.model_files.demo import demo_model_path
from mlx_llm_cli import blas

MKL = "/env/lib/libmkl_rt.so.3"
LINUX = {"system": "linux", "on_cpu": True, "mkl": MKL}


@pytest.mark.parametrize("arguments", [
    ["eval", "weights/demo", "--data", "valid.txt"], ["train", "--arch", "gpt"], ["finetune", "classify", "m"],
    ["distill", "t"], ["evaluate", "--model", "m"], ["predict", "--model", "m"],
])
def test_heavy_commands_re_run_with_mkl_on_linux(arguments):
    assert blas.mkl_reexec(arguments, {}, **LINUX) == {
        "LD_PRELOAD": MKL, "MKL_THREADING_LAYER": "INTEL", "MLX_LLM_MKL_REEXEC": "1"
    }


@pytest.mark.parametrize("arguments, environ, overrides", [
    (["generate", "--model", "m"], {}, {}),  # not a heavy command: starts at once
    (["convert", "gpt2"], {}, {}),
    ([], {}, {}),
    (["--version"], {}, {}),
    (["eval", "--help"], {}, {}),
    (["train", "-h"], {}, {}),
    (["eval", "m"], {}, {"system": "darwin"}),  # Accelerate
    (["eval", "m"], {}, {"on_cpu": False}),  # a GPU (mlx[cuda]) uses no BLAS
    (["eval", "m"], {}, {"mkl": None}),  # not installed
    (["eval", "m"], {"MLX_LLM_AUTO_MKL": "0"}, {}),  # turned off
    (["eval", "m"], {"MLX_LLM_AUTO_MKL": "off"}, {}),
    (["eval", "m"], {"MLX_LLM_MKL_REEXEC": "1"}, {}),  # done once already: never a loop
    (["eval", "m"], {"LD_PRELOAD": MKL}, {}),  # preloaded already
    (["eval", "m"], {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"}, {}),  # the user's BLAS
])
def test_no_re_run(arguments, environ, overrides):
    assert blas.mkl_reexec(arguments, environ, **{**LINUX, **overrides}) is None


def test_other_preloads_and_the_users_threading_layer_are_kept():
    updates = blas.mkl_reexec(["eval", "m"], {"LD_PRELOAD": "/lib/libjemalloc.so.2", "MKL_THREADING_LAYER": "GNU",
                                              "MLX_LLM_AUTO_MKL": "1"}, **LINUX)
    assert updates == {"LD_PRELOAD": f"{MKL}:/lib/libjemalloc.so.2", "MKL_THREADING_LAYER": "GNU",
                       "MLX_LLM_MKL_REEXEC": "1"}


def test_installed_mkl_is_the_file_in_the_environments_lib(tmp_path):
    assert blas.installed_mkl(str(tmp_path)) is None
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmkl_rt.so.3").write_bytes(b"")
    assert blas.installed_mkl(str(tmp_path)) == str(tmp_path / "lib" / "libmkl_rt.so.3")


def test_reexec_runs_the_same_command_line_and_only_that(monkeypatch):
    calls = []
    monkeypatch.setattr(blas.os, "execve", lambda *args: calls.append(args))
    monkeypatch.setattr(blas, "installed_mkl", lambda: MKL)
    monkeypatch.setattr(blas.sys, "platform", "linux")
    for name in ("LD_PRELOAD", "MLX_LLM_AUTO_MKL", "MLX_LLM_MKL_REEXEC", "MKL_THREADING_LAYER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(blas.sys, "orig_argv", ["python3", "-X", "utf8", "-m", "mlx_llm_cli.main", "eval", "m"])
    monkeypatch.setattr(blas.sys, "argv", ["/src/cli/main.py", "eval", "m"])
    blas.reexec_with_mkl()
    ((executable, argv, environment),) = calls
    assert executable == sys.executable and argv == [sys.executable, "-X", "utf8", "-m", "mlx_llm_cli.main", "eval", "m"]
    assert environment["LD_PRELOAD"] == MKL and environment["MLX_LLM_MKL_REEXEC"] == "1"
    assert environment["PATH"] == os.environ["PATH"]  # the rest of the environment is passed on
    monkeypatch.setattr(blas.sys, "argv", ["/src/cli/main.py", "eval", "other"])  # rewritten in the process
    blas.reexec_with_mkl()
    assert len(calls) == 1


def test_the_hint_names_the_exact_fix():
    hint = blas.slow_blas_hint("linux", "x86_64", True, True, None, {}, "/env/bin/python")
    assert "reference BLAS" in hint and "/env/bin/python -m pip install mkl" in hint and "mlx-llm-kit[mkl]" in hint
    hint = blas.slow_blas_hint("linux", "x86_64", True, True, MKL, {"MLX_LLM_AUTO_MKL": "0"})
    assert f"LD_PRELOAD={MKL} MKL_THREADING_LAYER=INTEL" in hint
    assert "OpenBLAS" in blas.slow_blas_hint("linux", "aarch64", True, True, None, {})  # no mkl wheel there
    assert "\n" not in hint
    for arguments in [("darwin", "arm64", True, False), ("linux", "x86_64", False, True),
                      ("linux", "x86_64", True, False)]:
        assert blas.slow_blas_hint(*arguments, None, {}) is None
    assert blas.slow_blas_hint("linux", "x86_64", True, True, None, {"MLX_LLM_BLAS_HINT": "0"}) is None


def _eval(tmp_path, **environment):
    text = tmp_path / "text.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 4)
    env = {key: value for key, value in os.environ.items()
           if key not in ("LD_PRELOAD", "MLX_LLM_AUTO_MKL", "MLX_LLM_MKL_REEXEC")}
    env.update({"MLX_LLM_BLAS_HINT": "1", **environment})  # conftest.py silences it for the other tests
    return subprocess.run([sys.executable, "-m", "mlx_llm_cli.main", "eval", str(demo_model_path()), "--data",
                           str(text), "--seq-len", "32"], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reference BLAS is MLX's Linux wheel's")
def test_eval_says_so_on_the_reference_blas(tmp_path):
    completed = _eval(tmp_path, MLX_LLM_AUTO_MKL="0")
    assert completed.returncode == 0, completed.stderr
    hints = [line for line in completed.stderr.splitlines() if "reference BLAS" in line]
    assert len(hints) == 1
    mkl = blas.installed_mkl()
    fix = f"LD_PRELOAD={mkl} " if mkl else "-m pip install mkl" if platform.machine() == "x86_64" else "OpenBLAS"
    assert fix in hints[0]
    assert '"perplexity"' in completed.stdout
    silenced = _eval(tmp_path, MLX_LLM_AUTO_MKL="0", MLX_LLM_BLAS_HINT="0")
    assert silenced.returncode == 0 and "reference BLAS" not in silenced.stderr


@pytest.mark.skipif(blas.installed_mkl() is None or not sys.platform.startswith("linux"),
                    reason="needs MKL installed in this environment (pip install 'mlx-llm-kit[mkl]')")
def test_eval_re_runs_itself_with_mkl_and_says_nothing(tmp_path):
    completed = _eval(tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "reference BLAS" not in completed.stderr and '"perplexity"' in completed.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reference BLAS is MLX's Linux wheel's")
def test_a_refused_run_prints_only_its_error(tmp_path):
    # The warning comes when the work starts, after the inputs are checked: bad input stays one line.
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "MLX_LLM_MKL_REEXEC")}
    env.update({"MLX_LLM_BLAS_HINT": "1", "MLX_LLM_AUTO_MKL": "0"})
    missing = tmp_path / "missing-model"
    completed = subprocess.run(
        [sys.executable, "-m", "mlx_llm_cli.main", "eval", str(missing), "--data", str(demo_model_path() / "run.json")],
        capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 2
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
    assert "reference BLAS" not in completed.stderr
