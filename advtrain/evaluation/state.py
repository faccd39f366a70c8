"""Saving and resuming a long evaluation.

After every chunk of every attack the gauntlet's per-example state (``fooled_by``,
``x_adv``, ``attacked``: which examples each attack has done, seconds) is written
atomically (``atomic_torch_save``) to ``eval_state.pt`` in the run dir (one file per
rank, ``eval_state.rankR.pt``, over several processes). Because progress is recorded
per example, a later run continues exactly at any batch size.

The state's key has three parts, each a hash: the model's weights (every tensor of its
``state_dict``), the examples (this rank's shard: content of ``x`` and ``y``, rank and
world size) and the settings (norm, eps, suite and its attack names, seed, EOT). A state
whose key differs in any part is refused with one line naming the part.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from advtrain.core.errors import ConfigError
from advtrain.core.io import atomic_torch_save
from advtrain.evaluation.distributed import world
from advtrain.evaluation.gauntlet import GauntletState

STATE_FILE = "eval_state.pt"
_PARTS = {"model": "other model weights", "data": "other examples", "settings": "other settings"}


def _update(h: hashlib._Hash, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_hash(model: nn.Module) -> str:
    """A hash of every parameter and buffer of ``model`` (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()[:16]


def fingerprint(settings: dict, x: Tensor, y: Tensor, model: nn.Module) -> dict[str, str]:
    """The state's key: hashes of ``model``'s weights, of the examples (with this rank's
    place in the process group) and of ``settings``, so a state is never misapplied."""
    data = hashlib.sha256(json.dumps(world()).encode())
    _update(data, x)
    _update(data, y)
    settings_hash = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    return {
        "model": weights_hash(model),
        "data": data.hexdigest()[:16],
        "settings": settings_hash.hexdigest()[:16],
    }


def state_files(folder: str | os.PathLike) -> list[Path]:
    """The saved states in ``folder``: ``eval_state.pt`` and the per-rank files."""
    folder = Path(folder)
    return sorted([*folder.glob(STATE_FILE), *folder.glob("eval_state.rank*.pt")])


def save_state(path: str | os.PathLike, state: GauntletState, key: dict[str, str]) -> None:
    """Write ``state`` atomically to ``path``."""
    payload = {
        "key": key,
        "fooled_by": state.fooled_by,
        "x_adv": state.x_adv,
        "attack_index": state.attack_index,
        "attacked": state.attacked,
        "seconds": list(state.seconds),
    }
    atomic_torch_save(payload, Path(path))


def load_state(path: str | os.PathLike, key: dict[str, str]) -> GauntletState | None:
    """The saved state at ``path`` (None if there is none); refuse a foreign one."""
    path = Path(path)
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = payload.get("key")
    saved = saved if isinstance(saved, dict) else {}
    for part, what in _PARTS.items():
        if saved.get(part) != key[part]:
            raise ConfigError(
                f"evaluation state {str(path)!r} was saved for {what}; "
                "delete it or set eval.resume=false"
            )
    return GauntletState(
        fooled_by=payload["fooled_by"],
        x_adv=payload["x_adv"],
        attack_index=int(payload["attack_index"]),
        attacked=payload["attacked"],
        seconds=[float(s) for s in payload["seconds"]],
    )
