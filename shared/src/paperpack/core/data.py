"""Reading the small JSON Lines files that the ``paperpack`` subcommands take as data."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paperpack.core.errors import ConfigError

__all__ = ["read_jsonl"]


def read_jsonl(path: str | os.PathLike[str], *, required: Sequence[str] = ("text",)) -> list[dict[str, Any]]:
    r"""Read a JSON Lines file: one JSON object per line, blank lines skipped.

    Args:
        path: the file.
        required: fields every record must have, each a string.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: when the file does not exist.
        ConfigError: naming the file, the line and the problem (bad JSON, not an object, a missing or
            non-string field, no records at all).

    Example:
        >>> import tempfile
        >>> from paperpack.core.data import read_jsonl
        >>> path = tempfile.mktemp(suffix=".jsonl")
        >>> _ = open(path, "w").write('{"text": "one"}\n\n{"text": "two"}\n')
        >>> [record["text"] for record in read_jsonl(path)]
        ['one', 'two']
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    records = []
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{file}:{number} is not valid JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{file}:{number} must be a JSON object, got {type(record).__name__}")
            for field in required:
                if not isinstance(record.get(field), str):
                    raise ConfigError(
                        f"{file}:{number} needs a string field {field!r}; it has {sorted(record)}"
                    )
            records.append(record)
    if not records:
        raise ConfigError(f"data file {file} holds no records")
    return records
