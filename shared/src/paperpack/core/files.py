"""Atomic file output: a failure or Ctrl-C leaves the old file (or none), never a half-written one."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_folder", "atomic_path", "atomic_write_text", "remove_path", "temporary_sibling"]

logger = logging.getLogger(__name__)
_TEMPORARY = "paperpack-tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def temporary_sibling(target: Path) -> Path:
    """A hidden, unique path beside ``target`` for staging it, named after this process.

    Staging paths left beside ``target`` by processes that no longer run (killed mid-write) are removed.
    """
    prefix = f".{target.name}.{_TEMPORARY}-"
    if target.parent.is_dir():
        for stale in target.parent.glob(f"{prefix}*"):
            pid = stale.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                logger.info("removing %s, left by an interrupted write", stale)
                remove_path(stale)
    return target.parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    Write the file at the yielded path (with any library: ``figure.savefig(path)``, ``path.write_text``).
    When the block raises, the temporary file is removed and ``target`` is untouched. Parent folders are
    created.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.files import atomic_path
        >>> target = Path(tempfile.mkdtemp()) / "results.json"
        >>> with atomic_path(target) as path:
        ...     _ = path.write_text("{}")
        >>> target.read_text()
        '{}'
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: writers such as matplotlib's savefig pick the format from it.
    temporary = Path(f"{temporary_sibling(final)}{final.suffix}")
    try:
        yield temporary
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as path:
        path.write_text(text, encoding="utf-8")
    return Path(target)


@contextmanager
def atomic_folder(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target`` that becomes ``target`` if the block succeeds.

    For outputs written by other libraries, e.g. a Trainer run and ``save_pretrained`` of its result: a crash
    or Ctrl-C leaves no ``target``, only the hidden folder, which the next write to ``target`` clears.

    Args:
        target: the folder to create.
        overwrite: replace an existing ``target`` (swapped in by two renames); otherwise refuse it.

    Raises:
        FileExistsError: when ``target`` exists and ``overwrite`` is False (checked before the block runs).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.files import atomic_folder
        >>> target = Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_folder(target) as folder:
        ...     _ = (folder / "config.json").write_text("{}")
        >>> sorted(p.name for p in target.iterdir())
        ['config.json']
    """
    final = Path(target)
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"output {str(target)!r} already exists; choose a new folder or allow overwriting"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(final)
    staging.mkdir()
    try:
        yield staging
        if final.exists():
            old = final.with_name(f".{final.name}.paperpack-old-{uuid.uuid4().hex[:8]}")
            final.rename(old)
            staging.rename(final)
            remove_path(old)
        else:
            staging.rename(final)
    except BaseException:
        remove_path(staging)
        raise
