"""Saving and resuming a long evaluation.

After every chunk of every attack the gauntlet's per-example state (``fooled_by``,
``x_adv``, progress, seconds) is written atomically (temporary file, then
``os.replace``) to ``eval_state.pt`` in the run dir. A later run with the same
settings (norm, eps, suite, seed, examples) continues where it stopped; a state saved
for other settings is refused with one clear line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from advtrain.errors import ConfigError
from advtrain.evaluation.gauntlet import GauntletState

STATE_FILE = "eval_state.pt"


def fingerprint(settings: dict, x: Tensor, y: Tensor) -> str:
    """A hash of the evaluation settings and the examples (so a state is not misapplied)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(x.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_state(path: str | os.PathLike, state: GauntletState, key: str) -> None:
    """Write ``state`` atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": key,
        "fooled_by": state.fooled_by,
        "x_adv": state.x_adv,
        "attack_index": state.attack_index,
        "todo": state.todo,
        "next_chunk": state.next_chunk,
        "seconds": list(state.seconds),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_state(path: str | os.PathLike, key: str) -> GauntletState | None:
    """The saved state at ``path`` (None if there is none); refuse a foreign one."""
    path = Path(path)
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("key") != key:
        raise ConfigError(
            f"evaluation state {str(path)!r} was saved for other settings or examples; "
            "delete it or set eval.resume=false"
        )
    return GauntletState(
        fooled_by=payload["fooled_by"],
        x_adv=payload["x_adv"],
        attack_index=int(payload["attack_index"]),
        todo=payload["todo"],
        next_chunk=int(payload["next_chunk"]),
        seconds=[float(s) for s in payload["seconds"]],
    )
