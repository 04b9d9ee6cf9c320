"""Replay inputs in bounded memory (streams/tools/inputs.py): files merged in event-time order with
the order of a stable in-memory sort, out-of-order files sorted on disk, Parquet read by batches,
bad lines kept with where they were read, and clear errors for files that cannot be read."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streams.cli import main
from streams.tools import inputs as inputs_module
from streams.tools.inputs import InputError, InputFile, InputMessage, InputStream, read_file, read_stream
from streams.tools.replay import in_event_order, run_offline
from streams.settings import Settings


def at(minute: int) -> str:
    return f"2026-11-02T08:{minute:02d}:00Z"


def cdr_end(call: str, start: int, end: int, user: str = "u1") -> dict[str, Any]:
    return {"event": "end", "call_id": call, "user": user, "customer": "C1", "caller": "+33100000001",
            "callee": "+33600000001", "direction": "outbound", "start_time": at(start), "answer_time": at(start),
            "end_time": at(end), "billsec": (end - start) * 60, "disposition": "ANSWERED"}


def registration(n: int, minute: int, user: str = "u1") -> dict[str, Any]:
    return {"user": user, "customer": "C1", "contact": f"sip:{user}@10.0.0.{n}", "instance_id": f"i{n}",
            "user_agent": "Yealink", "source_ip": f"10.0.0.{n}", "expires": 3600, "time": at(minute)}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def reference_order(files: list[InputFile]) -> list[InputMessage]:
    """What replays did before streaming: every file read whole, concatenated, sorted stably."""
    return sorted((m for f in files for m in read_stream(f.path, f.topic, f.time_field)), key=lambda m: m.time_ms)


def test_files_merge_in_event_time_order_and_ties_keep_the_files_order(tmp_path: Path) -> None:
    # a CDR ends at 08:05 and a registration happens at 08:05: the CDR file was given first
    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", [cdr_end("a", 0, 5), cdr_end("b", 1, 5), cdr_end("c", 2, 9)])
    regs = write_jsonl(tmp_path / "regs.jsonl", [registration(1, 3), registration(2, 5), registration(3, 5)])
    subs = write_jsonl(tmp_path / "subs.jsonl", [{"user": "u1", "customer": "C1", "plan": "pro"}])
    files = [InputFile(subs, "subscribers", ""), InputFile(cdrs, "cdrs", "start_time"),
             InputFile(regs, "sip-registrations", "time")]
    with InputStream(files) as stream:
        got = list(stream)
        assert len(stream) == 7 and stream.count("cdrs") == 3
        assert stream.sorted_on_disk == []  # both files were in order: read as they are
    origins = [m.origin for m in got]
    assert origins == [f"{subs}:1", f"{regs}:1", f"{cdrs}:1", f"{cdrs}:2", f"{regs}:2", f"{regs}:3", f"{cdrs}:3"]
    assert got == reference_order(files)
    # the other order of the files puts the registrations first at 08:05
    with InputStream(files[::-1]) as stream:
        assert [m.origin for m in stream][2:4] == [f"{regs}:2", f"{regs}:3"]


def test_an_unordered_file_is_sorted_on_disk_stably_in_small_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    # 500 calls, many ending at the same minute (ties), shuffled; a line without an end time sorts last
    rows: list[Any] = [cdr_end(f"c{i}", 0, rng.randrange(1, 40), user=f"u{i % 9}") for i in range(500)]
    rows.insert(123, {"event": "end", "call_id": "no-time", "user": "u1"})
    rng.shuffle(rows)
    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", rows)
    regs = write_jsonl(tmp_path / "regs.jsonl", [registration(n % 250, n % 60) for n in range(300)])
    files = [InputFile(cdrs, "cdrs", "start_time"), InputFile(regs, "sip-registrations", "time")]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    loaded: list[int] = []
    real_write = InputStream._write_run

    def write_run(self: InputStream, messages: Any) -> Path:
        batch = list(messages)
        loaded.append(len(batch))
        return real_write(self, batch)

    monkeypatch.setattr(InputStream, "_write_run", write_run)
    with InputStream(files, run_size=16, fan_in=4, scratch=scratch) as stream:
        assert stream.sorted_on_disk == [cdrs, regs]
        assert [p.name for p in scratch.iterdir()], "the runs are in the scratch directory"
        got = list(stream)
        assert got == list(stream), "a stream reads again the same"
    assert not list(scratch.iterdir()), "the runs are removed when the stream is closed"
    assert got == reference_order(files)
    assert got[-1].value == orjson.dumps({"event": "end", "call_id": "no-time", "user": "u1"})
    assert [m.time_ms for m in got[:-1]] == sorted(m.time_ms for m in got[:-1])
    # 501 CDRs in runs of 16 is 32 runs; merged four by four until at most four are left
    assert loaded[:32] == [16] * 31 + [501 - 31 * 16]
    assert len(loaded) > 32


def test_parquet_is_read_by_row_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [cdr_end(f"c{i}", i % 50, i % 50 + 3) for i in range(25)]
    rows.append({"event": "start", "call_id": "s1", "user": "u2", "customer": "C1", "caller": "+33100000001",
                 "callee": "+33600000001", "direction": "outbound", "start_time": at(1)})
    table = pa.Table.from_pylist(rows)
    path = tmp_path / "cdrs.parquet"
    pq.write_table(table, path, row_group_size=7)
    batches: list[int] = []
    real_iter = pq.ParquetFile.iter_batches

    def iter_batches(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        for batch in real_iter(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    monkeypatch.setattr(pq, "read_table", None)  # never the whole table
    monkeypatch.setattr(inputs_module, "PARQUET_BATCH", 5)
    got = list(read_file(InputFile(path, "cdrs", "start_time")))
    assert sum(batches) == 26 and max(batches) <= 5 and len(batches) >= 6
    assert [m.origin for m in got] == [f"{path}:row {n}" for n in range(1, 27)]
    assert orjson.loads(got[0].value)["call_id"] == "c0" and got[0].key == b"u1"
    # a `start` row leaves out the end-of-call columns the table has (null for it)
    assert set(orjson.loads(got[-1].value)) == {"event", "call_id", "user", "customer", "caller", "callee",
                                                "direction", "start_time"}
    with InputStream([InputFile(path, "cdrs", "start_time")]) as stream:
        assert stream.sorted_on_disk == [path]  # the `start` at 08:01 comes after calls ended later
        assert list(stream) == sorted(got, key=lambda m: m.time_ms)


def test_a_bad_record_is_kept_with_its_file_and_line(tmp_path: Path) -> None:
    cdrs = tmp_path / "cdrs.jsonl"
    cdrs.write_bytes(orjson.dumps(cdr_end("a", 0, 5)) + b"\n\n" + b'{"event": "end", "user": 7}\n'
                     + b'[1, 2]\n' + orjson.dumps(cdr_end("b", 0, 2)) + b"\n")
    with InputStream([InputFile(cdrs, "cdrs", "start_time")]) as stream:
        got = list(stream)
        _, counts = run_offline(Settings(), stream)
    # the schema is the worker's business (it routes such records to the DLQ): sent as read, last
    assert [m.origin for m in got] == [f"{cdrs}:5", f"{cdrs}:1", f"{cdrs}:3", f"{cdrs}:4"]
    assert got[2].value == b'{"event": "end", "user": 7}' and got[2].key is None
    assert got[3].value == b"[1, 2]" and got[3].time_ms == float("inf")
    assert counts[("cdrs", "dlq")] == 2 and counts[("cdrs", "ok")] == 2


def test_an_empty_file_is_an_empty_stream(tmp_path: Path) -> None:
    empty = tmp_path / "cdrs.jsonl"
    empty.write_bytes(b"")
    regs = write_jsonl(tmp_path / "regs.jsonl", [registration(1, 3)])
    with InputStream([InputFile(empty, "cdrs", "start_time"), InputFile(regs, "sip-registrations", "time")]) as s:
        assert len(s) == 1 and s.count("cdrs") == 0
        assert [m.origin for m in s] == [f"{regs}:1"]
    with InputStream([InputFile(empty, "cdrs", "start_time")]) as s:
        assert list(s) == [] and len(s) == 0


def test_a_missing_or_malformed_file_is_a_clear_error_before_anything_is_read(tmp_path: Path) -> None:
    regs = write_jsonl(tmp_path / "regs.jsonl", [registration(1, 3)])
    with pytest.raises(InputError, match=r"--cdrs .*nope\.jsonl: no such file"):
        InputStream([InputFile(tmp_path / "nope.jsonl", "cdrs", "start_time")])
    with pytest.raises(InputError, match=r"--registrations .*missing\.jsonl: no such file"):
        InputStream([InputFile(regs, "cdrs", "start_time"),
                     InputFile(tmp_path / "missing.jsonl", "sip-registrations", "time")])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(orjson.dumps(cdr_end("a", 0, 5)) + b"\n" * 3 + b"not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:4: not a JSON line"):
        InputStream([InputFile(bad, "cdrs", "start_time")])
    broken = tmp_path / "cdrs.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"cdrs\.parquet: not a readable Parquet file"):
        InputStream([InputFile(broken, "cdrs", "start_time")])


@pytest.mark.parametrize("command", ["summary", "replay"])
def test_the_commands_exit_2_without_a_traceback(tmp_path: Path, command: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("summary.parquet" if command == "summary" else "out")
    assert main([command, "--cdrs", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cdrwatch {command}: error: --cdrs {tmp_path / 'nope.jsonl'}: no such file" in err
    assert "Traceback" not in err


def test_summary_reports_throughput_and_peak_rss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", [cdr_end("a", 0, 5), cdr_end("b", 1, 3)])
    assert main(["summary", "--cdrs", str(cdrs), "--out", str(tmp_path / "s.parquet")]) == 0
    err = capsys.readouterr().err
    assert "processed 2/2 messages" in err
    assert "2 messages in " in err and " messages/s), peak RSS " in err and err.rstrip().endswith("MiB")


def test_a_replay_sends_the_subscribers_first_then_the_rest_of_the_stream(tmp_path: Path) -> None:
    from streams.tools.replay import _split_subscribers

    cdrs = write_jsonl(tmp_path / "cdrs.jsonl", [cdr_end("a", 0, 5), cdr_end("b", 1, 3)])
    regs = write_jsonl(tmp_path / "regs.jsonl", [registration(1, 4)])
    subs = write_jsonl(tmp_path / "subs.jsonl", [{"user": "u1", "customer": "C1", "plan": "pro"},
                                                 {"user": "u2", "customer": "C1", "plan": "pro"}])
    files = [InputFile(subs, "subscribers", ""), InputFile(cdrs, "cdrs", "start_time"),
             InputFile(regs, "sip-registrations", "time")]
    with InputStream(files) as stream:
        subscribers, rest, n_rest = _split_subscribers(stream)
        assert [m.origin for m in subscribers] == [f"{subs}:1", f"{subs}:2"]
        assert [m.origin for m in rest] == [f"{cdrs}:2", f"{regs}:1", f"{cdrs}:1"] and n_rest == 3
        listed = _split_subscribers(list(stream)[::-1])  # a list: sorted, the same split
        assert [[m.origin for m in part] for part in listed[:2]] == [[f"{subs}:2", f"{subs}:1"],
                                                                     [m.origin for m in rest]]


def test_a_list_of_messages_is_still_sorted_stably() -> None:
    msgs = [InputMessage("cdrs", None, b"%d" % i, t) for i, t in enumerate([3.0, 1.0, float("inf"), 1.0, -1.0])]
    assert [m.value for m in in_event_order(msgs)] == [b"4", b"1", b"3", b"0", b"2"]
