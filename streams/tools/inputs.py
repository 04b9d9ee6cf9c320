"""Recorded input streams read in event-time order, in bounded memory.

A replay sends the messages of several files — CDRs, registrations, subscriber records — as one
sequence in event-time order (a final CDR at its ``end_time``). A month of a few thousand users is
a million messages and hundreds of megabytes of JSON: ``InputStream`` never holds a file in memory.
It reads each file once up front, streaming, to check that it is well formed (a line that is not
JSON, or an unreadable Parquet file, is an error before anything is sent), to count its messages
(the progress of a long replay) and to see whether it is already in event-time order — a
recording from a switch, and what ``generate`` writes, are. Iterating then merges the files with a
k-way merge (``heapq.merge``); a file that is not in order is first sorted on disk, in runs of
``run_size`` messages written to a temporary directory and merged back.

The order is exactly that of a stable sort of the files' messages concatenated in the order they
were given (what replays did when they read every file into a list): equal event times keep their
file's order, and the files theirs. A message without a usable event time sorts last (``inf``);
subscriber records, which have none by design, sort first (``-inf``).
"""

from __future__ import annotations

import contextlib
import heapq
import marshal
import tempfile
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import orjson

from ..checks import input_file
from ..core.errors import ConfigError
from ..core.timeutil import parse_rfc3339, to_ms
from ..jsonl import read_jsonl

RUN_SIZE = 200_000  # messages sorted in memory at a time when a file is out of order (≈ 100 MB)
FAN_IN = 64  # sorted runs merged at once: open files stay few whatever the input's size
PARQUET_BATCH = 10_000  # rows decoded at a time from a Parquet file


class InputError(ConfigError):
    """An input file that cannot be replayed (missing, unreadable, not JSONL/Parquet)."""


@dataclass(frozen=True)
class InputMessage:
    topic: str
    key: bytes | None
    value: bytes
    time_ms: float  # for interleaving topics in event-time order; inf when unknown
    origin: str = ""  # where it was read: ``file:line`` (JSONL) or ``file:row N`` (Parquet)


event_time = attrgetter("time_ms")


@dataclass(frozen=True)
class InputFile:
    """A file of one topic's messages; ``time_field`` names the payload's event time ("" for
    subscriber records, which have none)."""

    path: Path
    topic: str
    time_field: str

    @property
    def flag(self) -> str:
        """The command-line option that names such a file, for error messages."""
        return "--registrations" if self.topic == "sip-registrations" else f"--{self.topic}"


def read_file(source: InputFile) -> Iterator[InputMessage]:
    """The messages of a JSONL (one JSON object per line) or Parquet file, in file order, streaming.

    A line that is not JSON is a malformed file (error with its line number); a JSON object that
    breaks the topic's schema is sent as is, so that the worker routes it to the DLQ."""
    _check(source)
    if source.path.suffix == ".parquet":
        return _read_parquet(source)
    return _read_jsonl(source)


def _check(source: InputFile) -> None:
    """A file that is missing, a directory or unreadable: an error naming its flag, at once."""
    try:
        input_file(source.path, source.flag)
    except ConfigError as exc:
        raise InputError(str(exc)) from None


def _read_jsonl(source: InputFile) -> Iterator[InputMessage]:
    path, topic, time_field = source.path, source.topic, source.time_field
    for line_no, raw, data in read_jsonl(path, source.flag, InputError):
        yield message(topic, raw, data, time_field, f"{path}:{line_no}")


def _read_parquet(source: InputFile) -> Iterator[InputMessage]:
    import pyarrow.parquet as pq

    path, topic, time_field = source.path, source.topic, source.time_field
    try:  # pyarrow raises several types for a bad file, when it opens and while it decodes
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
    except Exception as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    n = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        if batch is None:
            return
        for row in batch.to_pylist():
            n += 1
            if topic == "cdrs" and row.get("event") == "start":
                # one table holds both kinds of event: a `start` has no end-of-call columns
                row = {k: v for k, v in row.items() if v is not None}
            yield message(topic, orjson.dumps(row, default=str), row, time_field, f"{path}:row {n}")


def message(topic: str, raw: bytes, data: Any, time_field: str, origin: str = "") -> InputMessage:
    """The message of one record: keyed by its user, at its event time."""
    user = data.get("user") if isinstance(data, dict) else None
    key = user.encode() if isinstance(user, str) else None
    return InputMessage(topic, key, raw, time_of(topic, data, time_field), origin)


def time_of(topic: str, data: Any, time_field: str) -> float:
    """A record's event time (ms): ``inf`` when it has none that parses, ``-inf`` for subscriber
    records, which have none by design (they go first, so plans apply from the first event)."""
    when = float("inf") if time_field else float("-inf")
    if isinstance(data, dict):
        if topic == "cdrs" and data.get("event") == "end" and isinstance(data.get("end_time"), str):
            time_field = "end_time"  # a switch sends the final CDR when the call ends
        if isinstance(data.get(time_field), str):
            with contextlib.suppress(ValueError):
                when = float(to_ms(parse_rfc3339(data[time_field])))
    return when


def read_stream(path: Path, topic: str, time_field: str) -> list[InputMessage]:
    """A whole file as a list of messages, in file order: for small inputs (the bundled sample,
    tests). Replays of recorded months use ``InputStream``."""
    return list(read_file(InputFile(path, topic, time_field)))


class _Scanned:
    """What the first pass learnt of a file: its message count, and the sorted runs on disk when
    it was not in event-time order (None: read the file itself)."""

    def __init__(self, count: int, runs: list[Path] | None) -> None:
        self.count, self.runs = count, runs


class InputStream:
    """The messages of ``files`` merged in event-time order (module docstring), re-readable: each
    iteration reads the files (or their sorted runs) again from the start.

    Use it as a context manager, or call ``close()``: the sorted runs of out-of-order files live
    in a temporary directory until then."""

    def __init__(self, files: Sequence[InputFile], *, run_size: int = RUN_SIZE, fan_in: int = FAN_IN,
                 scratch: Path | None = None) -> None:
        if run_size < 1 or fan_in < 2:
            raise ValueError("run_size must be at least 1 and fan_in at least 2")
        self.files = tuple(files)
        self._run_size, self._fan_in, self._scratch_parent = run_size, fan_in, scratch
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._owner = True
        try:
            self._scanned = [self._scan(f) for f in self.files]
        except BaseException:
            self.close()
            raise

    def select(self, topics: Iterable[str]) -> InputStream:
        """The same stream restricted to the files of ``topics``, without reading them again (it
        shares this stream's sorted runs: close this one when both are done)."""
        wanted = set(topics)
        picked = [(f, s) for f, s in zip(self.files, self._scanned) if f.topic in wanted]
        sub = InputStream.__new__(InputStream)
        sub.files = tuple(f for f, _ in picked)
        sub._scanned = [s for _, s in picked]
        sub._run_size, sub._fan_in, sub._scratch_parent = self._run_size, self._fan_in, self._scratch_parent
        sub._scratch, sub._owner = self._scratch, False
        return sub

    def __len__(self) -> int:
        return sum(s.count for s in self._scanned)

    def count(self, topic: str) -> int:
        """Messages of ``topic`` in the stream."""
        return sum(s.count for f, s in zip(self.files, self._scanned) if f.topic == topic)

    @property
    def sorted_on_disk(self) -> list[Path]:
        """The files that were not in event-time order (sorted on disk before merging)."""
        return [f.path for f, s in zip(self.files, self._scanned) if s.runs is not None]

    def __iter__(self) -> Iterator[InputMessage]:
        # heapq.merge breaks ties by the position of the iterable: the files' order
        return heapq.merge(*(self._ordered(f, s) for f, s in zip(self.files, self._scanned)), key=event_time)

    def close(self) -> None:
        if self._owner and self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading --------------------------------------------------------------------------

    def _scan(self, source: InputFile) -> _Scanned:
        count, last, ordered = 0, float("-inf"), True
        for when in _times(source):
            count += 1
            if when < last:
                ordered = False
            else:
                last = when
        return _Scanned(count, None if ordered else self._sort(source))

    def _ordered(self, source: InputFile, scanned: _Scanned) -> Iterator[InputMessage]:
        if scanned.runs is None:
            return read_file(source)
        return heapq.merge(*(_read_run(run, source.topic) for run in scanned.runs), key=event_time)

    # ---- sorting on disk ------------------------------------------------------------------

    def _sort(self, source: InputFile) -> list[Path]:
        """Sorted runs of ``source``, in file order: each run is a stable sort of ``run_size``
        consecutive messages, so merging them (ties to the earlier run) is a stable sort of the
        whole file."""
        runs: list[Path] = []
        chunk: list[InputMessage] = []
        for msg in read_file(source):
            chunk.append(msg)
            if len(chunk) >= self._run_size:
                runs.append(self._write_run(sorted(chunk, key=event_time)))
                chunk = []
        if chunk:
            runs.append(self._write_run(sorted(chunk, key=event_time)))
        while len(runs) > self._fan_in:  # merge neighbours: still stable, and few files to open
            runs = [self._merge_runs(runs[i:i + self._fan_in], source.topic)
                    for i in range(0, len(runs), self._fan_in)]
        return runs

    def _merge_runs(self, runs: list[Path], topic: str) -> Path:
        if len(runs) == 1:
            return runs[0]
        merged = self._write_run(heapq.merge(*(_read_run(run, topic) for run in runs), key=event_time))
        for run in runs:
            run.unlink()
        return merged

    def _write_run(self, messages: Iterable[InputMessage]) -> Path:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="cdrwatch-sort-", dir=self._scratch_parent)
        with tempfile.NamedTemporaryFile("wb", dir=self._scratch.name, suffix=".run", delete=False) as handle:
            for msg in messages:
                marshal.dump((msg.time_ms, msg.key, msg.value, msg.origin), handle)
        return Path(handle.name)


def _times(source: InputFile) -> Iterator[float]:
    """The event times of ``read_file(source)``, with the same errors, without building messages."""
    if source.path.suffix == ".parquet":
        for msg in read_file(source):
            yield msg.time_ms
        return
    _check(source)
    for _line_no, _raw, data in read_jsonl(source.path, source.flag, InputError):
        yield time_of(source.topic, data, source.time_field)


def _read_run(path: Path, topic: str) -> Iterator[InputMessage]:
    with path.open("rb") as handle:
        while True:
            try:
                time_ms, key, value, origin = marshal.load(handle)
            except EOFError:
                return
            yield InputMessage(topic, key, value, time_ms, origin)
