"""The synthesis journal: every teacher answer appended to a JSON Lines file as it arrives.

A rerun with the same journal reads the answers back and asks the teacher only for the rest, so an
interrupted synthesis loses nothing it received. The first line records a fingerprint of the teacher prompts
and k; a journal written for other queries, guidelines, template or k is refused. A last line cut short by a
crash is dropped (and cut from the file) before new answers are appended.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from paperpack.core.errors import ConfigError
from paperpack.core.files import OUTPUT_KEY

__all__ = ["JOURNAL_KIND", "Journal", "fingerprint"]

JOURNAL_KIND = "safety-reasoning synthesis journal"


def fingerprint(prompts: Sequence[str], num_candidates: int) -> str:
    """A hash of the teacher prompts and k: what a journal's answers are answers to."""
    digest = hashlib.sha256(json.dumps([list(prompts), num_candidates]).encode("utf-8"))
    return digest.hexdigest()


class Journal:
    """An append-only record of teacher answers ``(query, candidate) -> text``.

    Args:
        path: the JSON Lines file; created (with its header) when missing. Its folder must exist.
        fingerprint: :func:`fingerprint` of this run's prompts and k.
        num_queries: the number of queries (answers must index them).
        num_candidates: k.

    Raises:
        ConfigError: when the file is not a journal, was written for another run, or is corrupt before its
            last line.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fingerprint: str, num_queries: int, num_candidates: int
    ):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.shape = (num_queries, num_candidates)
        if not self.path.parent.is_dir():
            raise ConfigError(f"the journal's folder {str(self.path.parent)!r} does not exist")
        if self.path.is_dir():
            raise ConfigError(f"the journal {str(self.path)!r} is a folder; give a file path")

    def _header(self) -> dict[str, object]:
        return {
            OUTPUT_KEY: "safety-reasoning synthesize",
            "kind": JOURNAL_KIND,
            "fingerprint": self.fingerprint,
            "queries": self.shape[0],
            "num_candidates": self.shape[1],
        }

    def load(self) -> dict[tuple[int, int], str]:
        """The answers recorded so far (none for a new journal, which is created with its header)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write(json.dumps(self._header()) + "\n", mode="w")
            return {}
        raw = self.path.read_bytes()
        body, newline, tail = raw.rpartition(b"\n")
        lines = body.split(b"\n") if newline else [tail]
        header = self._record(lines[0], 1, "not a synthesis journal (its first line is not a journal header)")
        if not isinstance(header, dict) or header.get("kind") != JOURNAL_KIND:
            raise ConfigError(
                f"{self.path} is not a synthesis journal (its first line is not a journal header)"
            )
        if header.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"the journal {self.path} was written for other queries, guidelines, teacher template or "
                "num_candidates; use a new journal (or output) for this run"
            )
        if not newline:  # the header alone, its newline lost
            self._write("\n", mode="a")
        answers: dict[tuple[int, int], str] = {}
        for number, line in enumerate(lines[1:], start=2):
            if line.strip():
                q, c, text = self._answer(line, number)
                answers[(q, c)] = text
        if newline and tail:  # a last line cut short by a crash: its answer is asked again
            self._truncate(len(body) + 1)
        return answers

    def _record(self, line: bytes, number: int, problem: str) -> object:
        try:
            return json.loads(line)
        except ValueError:
            raise ConfigError(f"{self.path}:{number} is {problem}") from None

    def _answer(self, line: bytes, number: int) -> tuple[int, int, str]:
        record = self._record(line, number, "not JSON; the journal is corrupt")
        if isinstance(record, dict):
            q, c, text = record.get("q"), record.get("c"), record.get("text")
            if (
                isinstance(q, int)
                and isinstance(c, int)
                and isinstance(text, str)
                and 0 <= q < self.shape[0]
                and 0 <= c < self.shape[1]
            ):
                return q, c, text
        raise ConfigError(f"{self.path}:{number} is not an answer of this run; the journal is corrupt")

    def append(self, records: Iterable[tuple[int, int, str]]) -> None:
        """Append answers and flush them to the disk."""
        text = "".join(json.dumps({"q": q, "c": c, "text": answer}) + "\n" for q, c, answer in records)
        if text:
            self._write(text, mode="a")

    def _write(self, text: str, *, mode: str) -> None:
        with self.path.open(mode, encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def _truncate(self, size: int) -> None:
        with self.path.open("r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())
