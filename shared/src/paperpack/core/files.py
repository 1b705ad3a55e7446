"""Where outputs may go, and how they get there: the output policy and durable, atomic writes.

The output policy, one rule for every command that writes: an output is a new path or an empty folder, or an
earlier output of the same command when overwriting is asked. Nothing paperpack did not write is ever deleted.

- A folder written by paperpack holds a marker file, :data:`OUTPUT_MARKER`, naming the command that wrote it
  and the top-level entries it wrote. With ``overwrite``, such a folder is replaced as a whole, unless it
  holds entries the marker does not list (a file the user put there since): then it is refused.
- A file output is recognised as paperpack's by a field :data:`OUTPUT_KEY` naming the command: in the
  ``__metadata__`` of a ``.safetensors`` file, or at the top level of a ``.json`` object. A file of another
  kind carries no marker, so an existing one is never replaced.

Atomic: an output is written into a hidden sibling (``.<name>.paperpack-tmp-<pid>-<id>``) and moved into
place only when complete, so a failure, Ctrl-C or a killed process leaves the old output (or none), never a
mix. Durable: every file and folder written is flushed to the disk (``fsync``) before the move, and the parent
folder after it, so that a power loss or a kernel crash also leaves the old output or the new one. An
existing folder is replaced by one atomic exchange on Linux (``renameat2(RENAME_EXCHANGE)``); where the OS or
the filesystem lacks it, by two renames (see :func:`publish_output`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paperpack.core.errors import CheckpointError, OutputExistsError

__all__ = [
    "OUTPUT_KEY",
    "OUTPUT_MARKER",
    "atomic_folder",
    "atomic_path",
    "atomic_write_text",
    "check_output",
    "check_output_path",
    "output_command",
    "publish_output",
    "remove_path",
    "temporary_sibling",
    "write_output_marker",
]

logger = logging.getLogger(__name__)

#: The marker file inside every output folder written by paperpack: ``{"command": ..., "files": [...]}``.
OUTPUT_MARKER = ".paperpack-output.json"
#: The field naming the command in a file output: a ``.safetensors`` ``__metadata__`` key, or a top-level
#: key of a ``.json`` object.
OUTPUT_KEY = "paperpack_output"

_TEMPORARY = "paperpack-tmp"
_OLD = "paperpack-old"
_MAX_HEADER_BYTES = 100_000_000

PathArg = str | os.PathLike[str]


# --- the output policy -----------------------------------------------------------------------------------


def _overwrite_hint(flag: str) -> str:
    return "--overwrite" if flag.startswith("--") else "overwrite=True"


def check_output_path(output: PathArg, inputs: Iterable[PathArg], *, flag: str = "output") -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (inputs are never overwritten).

    Args:
        output: the output path.
        inputs: the input paths.
        flag: how the output is named in the message (``"--output"`` for a command).

    Raises:
        CheckpointError: naming the input.
    """
    target = Path(output).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise CheckpointError(
                f"{flag} {str(output)!r} overlaps input {str(item)!r} (it is, contains or lies inside it); "
                "write to a new path"
            )


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("command"), str):
        return None
    files = marker.get("files")
    if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        return None
    return marker


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            return {}
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES:
            return {}
        header = json.loads(file.read(length))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def output_command(path: PathArg) -> str | None:
    """The command that wrote ``path``, read from its marker; None when paperpack did not write it.

    A folder is recognised by its :data:`OUTPUT_MARKER` file; a ``.safetensors`` file by :data:`OUTPUT_KEY` in
    its ``__metadata__``; a ``.json`` file by a top-level :data:`OUTPUT_KEY`. Other files carry no marker.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.files import atomic_folder, output_command
        >>> target = Path(tempfile.mkdtemp()) / "out"
        >>> with atomic_folder(target, command="demo") as folder:
        ...     _ = (folder / "a.txt").write_text("1")
        >>> output_command(target), output_command(target / "a.txt")
        ('demo', None)
    """
    target = Path(path)
    if target.is_symlink():
        return None
    if target.is_dir():
        marker = _read_marker(target)
        return None if marker is None else str(marker["command"])
    reader: Callable[[Path], Any]
    if target.suffix == ".safetensors":
        reader = _safetensors_metadata
    elif target.suffix == ".json":
        reader = lambda file: json.loads(file.read_text(encoding="utf-8"))  # noqa: E731
    else:
        return None
    try:
        content = reader(target)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    command = content.get(OUTPUT_KEY) if isinstance(content, dict) else None
    return command if isinstance(command, str) else None


def write_output_marker(folder: PathArg, *, command: str, files: Iterable[str] | None = None) -> Path:
    """Mark ``folder`` as an output of ``command`` (for outputs written in place, such as a Trainer's folder).

    Outputs written through :func:`atomic_folder` or a checkpoint writer are marked already.

    Args:
        folder: the output folder.
        command: the command that writes it, e.g. ``"sewa average"``.
        files: the top-level entries it wrote; None marks the whole folder as the command's (then
            ``overwrite`` replaces everything in it).

    Returns:
        The marker file.
    """
    content: dict[str, Any] = {"command": command}
    if files is not None:
        content["files"] = sorted(set(files) - {OUTPUT_MARKER})
    return atomic_write_text(Path(folder) / OUTPUT_MARKER, json.dumps(content, indent=2) + "\n")


def _check_folder(target: Path, command: str, overwrite: bool, flag: str) -> None:
    entries = sorted(entry.name for entry in target.iterdir())
    if not entries:
        return
    marker = _read_marker(target)
    if marker is None:
        raise OutputExistsError(
            f"{flag} {str(target)!r} is a folder that is not empty and that paperpack did not write; choose "
            "a new or empty folder (paperpack never deletes files it did not write)"
        )
    if marker["command"] != command:
        raise OutputExistsError(
            f"{flag} {str(target)!r} holds an output of `{marker['command']}`, not of `{command}`; choose a "
            "new or empty folder"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{flag} {str(target)!r} already exists (an earlier output of `{command}`); pass "
            f"{_overwrite_hint(flag)} to replace it, or choose a new folder"
        )
    if marker.get("files") is not None:
        foreign = [name for name in entries if name not in {*marker["files"], OUTPUT_MARKER}]
        if foreign:
            raise OutputExistsError(
                f"{flag} {str(target)!r} holds an earlier output of `{command}` and also "
                f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which it did not write; move "
                "them out or choose a new folder (paperpack never deletes files it did not write)"
            )


def _check_file(target: Path, command: str, overwrite: bool, flag: str) -> None:
    if not overwrite:
        raise OutputExistsError(
            f"{flag} {str(target)!r} already exists; pass {_overwrite_hint(flag)} to replace it (an earlier "
            f"output of `{command}` only), or choose a new path"
        )
    found = output_command(target)
    if found == command:
        return
    if target.suffix not in (".safetensors", ".json"):
        why = f"a {target.suffix or 'suffix-less'} file carries no paperpack marker"
    elif found is None:
        why = "paperpack did not write it"
    else:
        why = f"it is an output of `{found}`"
    raise OutputExistsError(
        f"{flag} {str(target)!r} already exists and is not an earlier output of `{command}` ({why}); "
        "choose a new path (paperpack never deletes files it did not write)"
    )


def check_output(
    target: PathArg,
    *,
    command: str,
    overwrite: bool = False,
    inputs: Iterable[PathArg] = (),
    flag: str = "--output",
    file: bool = False,
) -> Path:
    """Check that ``target`` may receive the output of ``command``, before anything is written.

    Allowed: a new path; an empty folder (folder outputs); with ``overwrite``, an earlier output of the same
    ``command`` (see the module's docs for how it is recognised) that holds nothing else. Call it before any
    side effect (loading a model, creating a folder); the writers check again just before they move their
    output into place.

    Args:
        target: the output path.
        command: the command writing it, e.g. ``"r-tsvm merge"``; recorded in the output's marker.
        overwrite: allow replacing an earlier output of ``command``.
        inputs: the command's input paths; the output may not be, contain or lie inside one.
        flag: how the output is named in messages: the command-line flag (``"--output"``) or the Python
            argument (``"output"``, and then the fix reads ``overwrite=True`` instead of ``--overwrite``).
        file: the output is one file (a ``.safetensors``, a results ``.json``), not a folder.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: when the output overlaps an input.
        OutputExistsError: when something is in the way; the message names ``flag`` and the fix.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.files import check_output
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> check_output(folder / "new", command="sewa average").name
        'new'
        >>> check_output(folder, command="sewa average")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        paperpack.core.errors.OutputExistsError: --output '...' is a folder that is not empty and that ...
    """
    path = Path(target)
    check_output_path(path, inputs, flag=flag)
    _recover(path)
    if path.is_symlink():
        raise OutputExistsError(
            f"{flag} {str(path)!r} is a symbolic link; pass the path it points to, or a new path"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
            break
    if not path.exists():
        return path
    if file:
        if path.is_dir():
            raise OutputExistsError(f"{flag} {str(path)!r} is a folder; a file is wanted: choose a file path")
        _check_file(path, command, overwrite, flag)
    else:
        if not path.is_dir():
            raise OutputExistsError(
                f"{flag} {str(path)!r} is a file; a new or empty folder is wanted: choose another path"
            )
        _check_folder(path, command, overwrite, flag)
    return path


# --- durable, atomic moves -------------------------------------------------------------------------------


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


def _stale(target: Path, kind: str) -> Iterator[Path]:
    """Siblings of ``target`` of ``kind`` left by processes that no longer run."""
    prefix = f".{target.name}.{kind}-"
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(f"{prefix}*"):
        pid = stale.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            yield stale


def _recover(target: Path) -> None:
    """Put back an old output left aside by a process killed between the two renames of the fallback swap."""
    if target.exists() or target.is_symlink():
        return
    for old in sorted(_stale(target, _OLD)):
        logger.warning("restoring %s from %s, left aside by an interrupted write", target, old.name)
        os.rename(old, target)
        _fsync_path(target.parent)
        return


def temporary_sibling(target: Path) -> Path:
    """A hidden, unique path beside ``target`` for staging it, named after this process.

    Staging paths left beside ``target`` by processes that no longer run (killed mid-write) are removed.
    """
    _recover(target)
    for stale in [*_stale(target, _TEMPORARY), *_stale(target, _OLD)]:
        logger.info("removing %s, left by an interrupted write", stale)
        remove_path(stale)
    return target.parent / f".{target.name}.{_TEMPORARY}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # Windows cannot open a folder; there its entries are not flushed separately
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """``fsync`` every file under ``path`` and then every folder, deepest first."""
    if not path.is_dir():
        _fsync_path(path)
        return
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _fsync_path(Path(folder, name))
        _fsync_path(Path(folder))


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2_function() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28, musl
    except OSError:
        return None
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


_renameat2 = _renameat2_function()


def _rename(source: Path, target: Path, flags: int) -> bool:
    """``renameat2(source, target, flags)``; False when this OS or filesystem does not offer it."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def publish_output(
    staging: PathArg, target: PathArg, *, command: str, overwrite: bool = False, flag: str = "--output"
) -> Path:
    """Move a finished staging folder (or file) onto ``target``, durably and atomically.

    A folder gets the :data:`OUTPUT_MARKER` of ``command`` (listing its top-level entries). Every file and
    folder in ``staging`` is flushed to the disk, ``target`` is checked again with :func:`check_output`, then
    ``staging`` takes its place and the parent folder is flushed. A file replaces an existing one by one
    rename. A folder replaces an existing one by one atomic exchange (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``) and the old one is then removed. Where the exchange is not available (other systems,
    some network filesystems) two renames are used: the old folder is moved aside to
    ``.<name>.paperpack-old-<pid>-<id>``, then the new one into place; for that moment ``target`` does not
    exist, and should the process die then, the next :func:`check_output` of ``target`` puts the old folder
    back.

    Args:
        staging: the folder or file, beside ``target`` (same filesystem), e.g. from :func:`temporary_sibling`.
        target: the output path.
        command: the command that wrote it.
        overwrite: allow replacing an earlier output of ``command``.
        flag: how the output is named in messages.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: when ``target`` was taken since it was checked (``staging`` is left in place).
    """
    source, final = Path(staging), Path(target)
    folder = source.is_dir()
    if folder:
        names = [entry.name for entry in source.iterdir() if entry.name != OUTPUT_MARKER]
        write_output_marker(source, command=command, files=names)
    _fsync_tree(source)
    check_output(final, command=command, overwrite=overwrite, flag=flag, file=not folder)
    old: Path | None = None
    if not final.exists():
        if not _rename(source, final, _RENAME_NOREPLACE):
            os.rename(source, final)
    elif not folder:
        os.replace(source, final)
    elif _rename(source, final, _RENAME_EXCHANGE):
        old = source  # the exchange left the old output at the staging path
    else:
        old = final.with_name(f".{final.name}.{_OLD}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        try:
            os.rename(source, final)
        except BaseException:
            os.rename(old, final)
            raise
    _fsync_path(final.parent)
    if old is not None:
        remove_path(old)
    return final


@contextmanager
def atomic_path(target: PathArg) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` durably if the block succeeds.

    Write the file at the yielded path (with any library: ``figure.savefig(path)``, ``path.write_text``).
    When the block raises, the temporary file is removed and ``target`` is untouched. Parent folders are
    created. The file is flushed to the disk before the rename and the folder after it. This is the low-level
    tool: it replaces ``target`` without asking; commands check their outputs with :func:`check_output`.

    Examples:
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
        _fsync_path(temporary)
        os.replace(temporary, final)
        _fsync_path(final.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(target: PathArg, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and durably, and return the path."""
    with atomic_path(target) as path:
        path.write_text(text, encoding="utf-8")
    return Path(target)


@contextmanager
def atomic_folder(
    target: PathArg,
    *,
    command: str = "paperpack",
    overwrite: bool = False,
    inputs: Iterable[PathArg] = (),
    flag: str = "--output",
) -> Iterator[Path]:
    """Check ``target``, yield an empty hidden folder beside it, and make that folder ``target`` on success.

    For outputs written by other libraries, e.g. a Trainer run and ``save_pretrained`` of its result. The
    output policy is checked first (:func:`check_output`). On success the folder is marked as ``command``'s
    output and moved into place by :func:`publish_output` (flushed to the disk, swapped atomically). A failure
    or Ctrl-C leaves ``target`` as it was and removes the hidden folder; a killed process leaves the hidden
    folder, which the next write to ``target`` clears.

    Args:
        target: the output folder.
        command: the command writing it.
        overwrite: replace an earlier output of ``command``.
        inputs: input paths the output may not overlap.
        flag: how the output is named in messages.

    Raises:
        OutputExistsError: when ``target`` may not be written (checked before the block runs, and again
            before the move).
        CheckpointError: when ``target`` overlaps an input.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from paperpack.core.files import atomic_folder
        >>> target = Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_folder(target, command="example") as folder:
        ...     _ = (folder / "config.json").write_text("{}")
        >>> sorted(p.name for p in target.iterdir())
        ['.paperpack-output.json', 'config.json']
    """
    final = check_output(target, command=command, overwrite=overwrite, inputs=inputs, flag=flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(final)
    staging.mkdir()
    try:
        yield staging
        publish_output(staging, final, command=command, overwrite=overwrite, flag=flag)
    except BaseException:
        remove_path(staging)
        raise
