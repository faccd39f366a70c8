"""The project's one atomic text writer: a temporary file beside the target, then
``os.replace``, so a reader never sees half a file (``torch.save`` has its own in
``advtrain.training.checkpoint_io.atomic_torch_save``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
