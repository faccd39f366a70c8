"""A data set's files: there, fetched, or one line naming the setting that fixes it.

``check_files`` of a data module runs before a run writes anything. Files that are
missing are a user error (``data.root``, ``data.download=true``); a download that fails
(no network, a refused connection) is one too, and leaves nothing behind: every file and
folder it created below ``data.root`` (``data.root`` itself when the download created it)
is removed again.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

from advtrain.core.errors import ConfigError, ConfigFileNotFound

# what a failed download raises: urllib's URLError/HTTPError and socket errors are
# OSErrors; torchvision's MNIST raises RuntimeError once every mirror failed
DOWNLOAD_ERRORS = (OSError, RuntimeError, EOFError, tarfile.TarError)


def missing_files(paths: Iterable[Path], suffixes: tuple[str, ...] = ("",)) -> list[Path]:
    """The ``paths`` present under none of the names ``path + suffix``."""
    return [p for p in paths if not any(Path(f"{p}{s}").is_file() for s in suffixes)]


def not_found(name: str, root: Path, missing: Path) -> ConfigFileNotFound:
    """The one line for files that are not there (and ``data.download`` is false)."""
    rel = missing.relative_to(root) if missing.is_relative_to(root) else missing
    return ConfigFileNotFound(
        f"no {name} files in data.root={str(root)!r} (missing {rel}); put them there, set "
        f"data.root=<the folder that holds them>, or data.download=true to fetch them"
    )


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_new(root: Path, created: Path | None, before: set[Path]) -> None:
    """Remove what a failed download left: ``created`` (a folder it made), else every
    path below ``root`` that is not in ``before`` (deepest first)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for path in sorted(set(root.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _reason(err: BaseException) -> str:
    """An error's message on one line (torchvision's span several), at most 200 characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def fetch_or_fail(fetch: Callable[[], None], name: str, root: Path) -> None:
    """Run ``fetch`` (a download into ``root``); when it fails, remove what it created and
    raise one line naming ``data.root`` and the reason."""
    root = Path(root)
    created = _first_missing(root)
    before = set(root.rglob("*")) if created is None else set()
    try:
        fetch()
    except DOWNLOAD_ERRORS as err:
        _remove_new(root, created, before)
        raise ConfigError(
            f"data.download=true: the {name} files could not be downloaded into "
            f"data.root={str(root)!r} ({_reason(err)}); check the network, or put the files "
            "there yourself"
        ) from err
