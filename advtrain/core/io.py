"""The project's one atomic writer.

Every run file (``metrics.json``, ``report.json``, ``report.md``, ``run.json``,
checkpoints, evaluation states, VNN-COMP results) is written to a temporary file beside
its target, flushed and fsynced, then renamed over the target with ``os.replace``; a
failure removes the temporary file. A reader never sees half a file and a crash never
leaves a truncated ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a binary temporary file beside ``path``, then move it over ``path``.

    The parent folder is created when missing; the temporary file is removed when
    ``write`` (or the rename) fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text", "write_json_atomic"]
