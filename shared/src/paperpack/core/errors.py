"""Exceptions that paperpack users catch.

Every exception subclasses a built-in one as fits (``ValueError`` for bad values, ``FileNotFoundError`` for
missing paths), so code that already catches those keeps working. Messages name the argument, the value and
what is allowed.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointNotFoundError", "ConfigError", "OutputExistsError", "PaperpackError"]


class PaperpackError(Exception):
    """Base class of every paperpack exception."""


class ConfigError(PaperpackError, ValueError):
    """An argument or configuration value is not allowed.

    Examples:
        >>> from paperpack.core.validation import check_positive
        >>> check_positive("rank", 0)
        Traceback (most recent call last):
        ...
        paperpack.core.errors.ConfigError: `rank` must be > 0, got 0
    """


class CheckpointError(PaperpackError, ValueError):
    """A checkpoint cannot be read or written as asked.

    Raised for pickle files (paperpack reads safetensors only), truncated, corrupt or unsupported files (the
    message names the file and the problem), inputs whose keys, shapes or dtypes differ, and an output path
    equal to or inside an input.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path does not exist or holds no safetensors weights."""


class OutputExistsError(PaperpackError, FileExistsError):
    """An output path is taken: by files paperpack did not write, or by an earlier output without overwrite.

    Raised by :func:`paperpack.core.files.check_output` before anything is written; the message names the
    flag (``--output``) and the fix. An output overlapping an input raises :class:`CheckpointError` instead.
    """
