"""Running README.md's shell commands as a user types them.

Each command of README.md's ``bash`` code blocks runs verbatim from a fresh working
directory (``uv run`` is the project's virtual environment, so its console scripts are
called directly), plus only size-shrinking overrides (epochs, batches, example counts);
never ``hydra.*`` or path overrides. Placeholders (``<run>``, ``ckpt_path=...``) are filled
with the outputs of an earlier command run the same way.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent

# size-shrinking overrides: one epoch of two batches, one validation and one test batch
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
FEW = ["eval.n_examples=16", "eval.curve_n_examples=16"]


def readme_commands() -> list[str]:
    """Every ``uv run ...`` line of README.md's bash code blocks, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    # words re-joined by single spaces (no quoting): placeholders such as <run> stay as typed
    return [
        " ".join(shlex.split(line, comments=True)) for line in lines if line.startswith("uv run")
    ]


def argv_of(command: str, **fill: str) -> list[str]:
    """The command's argv without ``uv run``, placeholders filled: ``<run>`` and ``...``
    (``ckpt_path=...``), ``<other ckpt>``."""
    for placeholder, value in fill.items():
        command = command.replace(placeholder, value)
    words = shlex.split(command)
    assert words[:2] == ["uv", "run"], command
    return words[2:]


def run(
    argv: list[str], cwd: Path, timeout: float = 1800, **extra_env: str
) -> subprocess.CompletedProcess:
    """A console script of the project's environment as a subprocess in ``cwd``
    (the environment of this process, debug switches removed, plus ``extra_env``)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "MPLBACKEND": "Agg",
    }
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("ADVTRAIN_DEBUG", None)
    env.update(extra_env)
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_dirs(cwd: Path, task: str = "train") -> list[Path]:
    """The Hydra run dirs a command left below ``cwd/outputs/<task>/runs``, oldest first."""
    root = cwd / "outputs" / task / "runs"
    return sorted(root.iterdir()) if root.is_dir() else []


def run_in_process(argv: list[str], cwd: Path) -> int:
    """The console script's ``main`` in this process (no ~10 s start-up), in ``cwd`` with
    ``sys.argv = argv``; returns the exit code. Hydra's global state is reset first."""
    from hydra.core.global_hydra import GlobalHydra

    from advtrain.cli import eval as eval_cli
    from advtrain.cli import train as train_cli
    from advtrain.cli import verify as verify_cli

    mains = {
        "advtrain-train": train_cli.main,
        "advtrain-eval": eval_cli.main,
        "advtrain-verify": verify_cli.main,
    }
    GlobalHydra.instance().clear()
    old_cwd, old_argv = Path.cwd(), sys.argv
    os.chdir(cwd)
    sys.argv = list(argv)
    try:
        mains[argv[0]]()
        return 0
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        GlobalHydra.instance().clear()
