"""JSON Lines files: one JSON value per line, blank lines skipped, errors that name the line."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Iterator

import orjson


def iter_jsonl(handle: IO[bytes], path: Path, error: type[Exception]) -> Iterator[tuple[int, bytes, Any]]:
    """``(line number, raw bytes, parsed value)`` for each non-blank line; a line that is not JSON
    raises ``error`` naming the file and line."""
    for line_no, line in enumerate(handle, start=1):
        raw = line.strip()
        if not raw:
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise error(f"{path}:{line_no}: not a JSON line ({exc})") from None
        yield line_no, raw, data


def read_jsonl(path: Path, what: str, error: type[Exception]) -> Iterator[tuple[int, bytes, Any]]:
    """``iter_jsonl`` of the file at ``path``, opened when the first line is asked for; a file that
    cannot be opened raises ``error`` naming it (``what``: the flag or role that gave it)."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise error(f"{what} {path}: cannot read ({exc.strerror})") from None
    with handle:
        yield from iter_jsonl(handle, path, error)
