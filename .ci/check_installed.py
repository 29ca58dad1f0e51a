"""Check an installed mlx-llm-kit as a user gets it: run with the Python of a virtual
environment that holds only the built wheel, from a folder outside the clone.

It checks that the package comes from site-packages (not the source tree), that every
module imports, that `mlx-llm --version` and every subcommand's `--help` work, and that
`mlx-llm generate` runs the built-in demo model with no network. With `--bare` (the wheel
installed without extras) a module may fail to import only for want of a package of one of
its extras, and `mlx-llm serve` must say which extra to install. It prints one line per
check and ends with "N passed, N failed"; the exit code is 1 if any check failed.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import click

CHECKS: list[tuple[str, bool, str]] = []
# Packages that only an extra installs (pyproject.toml's optional dependencies).
EXTRA_PACKAGES = {"starlette": "serve", "uvicorn": "serve", "gguf": "gguf"}


def check(name: str, ok: bool, detail: str = "") -> None:
    CHECKS.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail and not ok else ""), flush=True)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def check_origin() -> None:
    import mlx_llm
    import mlx_llm_cli

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for package in (mlx_llm, mlx_llm_cli):
        origin = Path(package.__file__).resolve()
        check(f"{package.__name__} imports from site-packages", site in origin.parents, str(origin))


def check_imports(bare: bool) -> None:
    for root in ("mlx_llm", "mlx_llm_cli"):
        package = importlib.import_module(root)
        names = [root] + [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{root}.")]
        failed, need_extras = [], []
        for name in names:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as error:
                if bare and error.name in EXTRA_PACKAGES:
                    need_extras.append(f"{name} [{EXTRA_PACKAGES[error.name]}]")
                else:
                    failed.append(f"{name} ({error})")
            except Exception as error:  # noqa: BLE001 - report every failing module, not the first
                failed.append(f"{name} ({type(error).__name__}: {error})")
        needing = f" (without extras: {', '.join(need_extras)} need theirs)" if need_extras else ""
        check(f"all {len(names)} modules of {root} import{needing}", not failed, "; ".join(failed))


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append(prefix + (name,))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, prefix + (name,)))
    return paths


def check_commands(executable: str) -> None:
    import mlx_llm
    from mlx_llm_cli.main import main

    version = run([executable, "--version"])
    check("mlx-llm --version", version.returncode == 0 and mlx_llm.__version__ in version.stdout,
          version.stdout + version.stderr)
    for path in command_paths(main):
        result = run([executable, *path, "--help"])
        check(f"mlx-llm {' '.join(path)} --help", result.returncode == 0 and "Usage:" in result.stdout,
              result.stderr[-500:])


def check_generate(executable: str) -> None:
    result = run([executable, "generate", "--prompt", "ROMEO:", "--max-tokens", "24", "--seed", "0"])
    text = result.stdout.strip()
    check("mlx-llm generate with the built-in demo model",
          result.returncode == 0 and len(text) > 20 and "tokens/s" in result.stderr,
          f"exit {result.returncode}: {result.stderr[-800:]}")
    info = run([executable, "info", str(Path(importlib.import_module("mlx_llm").__file__).parent / "demo_model")])
    check("mlx-llm info on the packaged demo model", info.returncode == 0 and "gpt2" in info.stdout.lower(),
          info.stdout + info.stderr[-500:])


def check_serve_without_extra(executable: str) -> None:
    result = run([executable, "serve", "--model", "x"])
    check("mlx-llm serve without its extra names the install command, exit 2",
          result.returncode == 2 and "mlx-llm-kit[serve]" in result.stderr
          and len(result.stderr.strip().splitlines()) == 1, f"exit {result.returncode}: {result.stderr[-500:]}")


def main() -> int:
    bare = "--bare" in sys.argv[1:]
    executable = str(Path(sys.executable).parent / "mlx-llm")
    check_origin()
    check_imports(bare)
    check_commands(executable)
    check_generate(executable)
    if bare:
        check_serve_without_extra(executable)
    failed = sum(not ok for _, ok, _ in CHECKS)
    print(f"wheel: {len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
