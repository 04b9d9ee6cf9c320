"""`cdrwatch import` (streams/importers.py) on sample files written in each switch's real format
(tests/data/import/): conversions, field mappings, rejects with line numbers, and CLI exit codes."""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.cli import main
from streams.codecs import decode_cdr
from streams.core.errors import ConfigError
from streams.processor import build_processor
from streams.settings import load_plans_and_rates
from streams.core.state import MemoryStore
from streams.tools.importers import (DEFAULT_INBOUND_CONTEXTS, ImportOptions, convert_file, convert_freeswitch,
                               default_rejects_path, format_import)
from streams.settings import Settings

DATA = Path(__file__).resolve().parents[1] / "data" / "import"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def run(fmt: str, name: str, tmp_path: Path, **options: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
    out = tmp_path / f"{fmt}.jsonl"
    summary = convert_file(fmt, DATA / name, out, ImportOptions(**options))
    rows = read_jsonl(out)
    rejects = {r["line"]: r["reason"] for r in read_jsonl(summary.rejects_path)}
    assert summary.converted == len(rows) and summary.rejected == len(read_jsonl(summary.rejects_path))
    return rows, rejects


# (format, sample file, rows converted, {line: reason (regex)} of the rows rejected)
SAMPLES = [
    pytest.param("asterisk", "asterisk-master-16.csv", 7, {
        7: r"duplicate call_id 'ast-[0-9a-f]+' \(first at line 1\)",
        8: r"expected 16 to 21 columns \(Master.csv\), got 11",
        9: r"start: not a date-time: '2026-11-31 13:00:00'",
        10: r"billsec: not an integer: 'abc'",
        11: r"not a valid cdrs payload: end_time .* is before start_time",
        12: r"not a valid cdrs payload: billsec 600 exceeds the 60 s",
        13: r"disposition: unknown 'ANSWER'",
        14: r"not a CSV row",
    }, id="asterisk-16-columns"),
    pytest.param("asterisk", "asterisk-master-21.csv", 4, {
        6: r"dst is empty",
        7: r"not a valid cdrs payload: billsec 115 on a call with no answer_time",
        8: r"expected 16 to 21 columns \(Master.csv\), got 22",
        9: r"duplicate call_id '1762243200.64' \(first at line 1\)",
    }, id="asterisk-21-columns"),
    pytest.param("freeswitch", "freeswitch-epoch.jsonl", 7, {
        7: r"not a JSON object",
        8: r"no variables object \(not a mod_json_cdr record\)",
        9: r"no end_uepoch or end_epoch",
        10: r"start_epoch: not an integer: 'yesterday'",
    }, id="freeswitch-epoch"),
    pytest.param("freeswitch", "freeswitch-uepoch.jsonl", 5, {
        6: r"expected a JSON object, got list",
        7: r"billsec 12 but no answer_uepoch/answer_epoch",
        8: r"not a valid cdrs payload: end_time .* is before start_time",
        9: r"no sip_call_id or uuid",
        10: r"duplicate call_id 'c1f0a926e413d6a8@192.168.1.20' \(first at line 1\)",
    }, id="freeswitch-uepoch"),
    pytest.param("freeswitch", "freeswitch", 1, {}, id="freeswitch-one-file-per-call"),
    pytest.param("kamailio", "kamailio-acc-cdrs.csv", 3, {
        5: r"end_time is empty",
        6: r"expected 11 columns as in the header, got 7",
        7: r"start_time: not a date-time: '2026/11/06 10:10:00'",
        8: r"callid is empty",
        9: r"duration: negative",
        10: r"not a valid cdrs payload: billsec 500 exceeds the 100 s",
        11: r"duplicate call_id 'a84b4c76e66710@pc33.voip.example.com' \(first at line 2\)",
    }, id="kamailio-csv"),
    pytest.param("kamailio", "kamailio-acc-cdrs.jsonl", 4, {
        6: r"not a JSON object",
        7: r"expected a JSON object, got list",
        8: r"not a valid cdrs payload: end_time .* is before start_time",
        9: r"direction: expected outbound, inbound or forwarded, got 'sideways'",
        10: r"no user: empty src_user",
    }, id="kamailio-jsonl"),
]


@pytest.mark.parametrize(("fmt", "name", "converted", "rejected"), SAMPLES)
def test_sample_files_convert_and_bad_rows_are_rejected_with_their_line(
    fmt: str, name: str, converted: int, rejected: dict[int, str], tmp_path: Path
) -> None:
    rows, rejects = run(fmt, name, tmp_path)
    assert len(rows) == converted
    assert sorted(rejects) == sorted(rejected)
    for line, pattern in rejected.items():
        assert re.search(pattern, rejects[line]), (line, rejects[line])
    for row in rows:  # every output row is what a worker accepts
        assert decode_cdr(orjson.dumps(row)).is_end
    assert len({row["call_id"] for row in rows}) == len(rows)


# ------------------------------------------------------------------------------------ Asterisk


def test_asterisk_16_columns_field_mapping(tmp_path: Path) -> None:
    rows, _ = run("asterisk", "asterisk-master-16.csv", tmp_path)
    first = rows[0]
    assert first["call_id"].startswith("ast-")
    assert {k: v for k, v in first.items() if k != "call_id"} == {
        "event": "end", "user": "1001", "customer": "1001", "caller": "1001", "callee": "0612345678",
        "direction": "outbound", "start_time": "2026-11-03T09:15:02+01:00", "answer_time": "2026-11-03T09:15:09+01:00",
        "end_time": "2026-11-03T09:17:31+01:00", "billsec": 142, "disposition": "ANSWERED",
    }
    by_callee = {r["callee"]: r for r in rows}
    assert by_callee["+33145678901"]["disposition"] == "NO ANSWER" and by_callee["+33145678901"]["answer_time"] is None
    assert by_callee["0033298765432"]["disposition"] == "BUSY"
    assert by_callee["0899123456"]["disposition"] == "FAILED"  # CONGESTION
    inbound = by_callee["0970123456"]  # dcontext from-trunk: a call to the user, who is the dst
    assert (inbound["direction"], inbound["user"], inbound["caller"]) == ("inbound", "0970123456", "0145678901")
    assert by_callee["112"]["user"] == "acme-1002"  # accountcode wins


def test_asterisk_21_columns_one_call_per_linkedid(tmp_path: Path) -> None:
    rows, _ = run("asterisk", "asterisk-master-21.csv", tmp_path)
    assert [r["call_id"] for r in rows] == ["1762243200.64", "1762246800.67", "1762248600.69", "1761355800.71"]
    assert {r["user"] for r in rows} == {"acme"}
    # a transferred call (two rows of one linkedid): one call, over both legs, their talk times added
    transferred = rows[0]
    assert (transferred["start_time"], transferred["answer_time"], transferred["end_time"], transferred["billsec"]) == (
        "2026-11-04T09:00:00+01:00", "2026-11-04T09:00:06+01:00", "2026-11-04T09:05:10+01:00", 180 + 120)
    assert (transferred["caller"], transferred["callee"]) == ("1001", "0612345678")
    assert rows[2]["direction"] == "inbound"  # from-pstn
    assert rows[3]["start_time"] == "2026-10-25T02:30:00+02:00"  # the repeated hour: its first occurrence


@pytest.mark.parametrize(
    ("options", "user", "customer", "start"),
    [
        ({}, "acme", "acme", "2026-11-04T09:00:00+01:00"),
        ({"user_field": "src"}, "1001", "1001", "2026-11-04T09:00:00+01:00"),
        ({"user_field": "src", "customer": "ACME SAS"}, "1001", "ACME SAS", "2026-11-04T09:00:00+01:00"),
        ({"user_field": "src", "customer_field": "accountcode"}, "1001", "acme", "2026-11-04T09:00:00+01:00"),
        ({"timezone": ZoneInfo("UTC")}, "acme", "acme", "2026-11-04T09:00:00+00:00"),  # usegmtime=yes
    ],
)
def test_asterisk_user_customer_and_timezone_options(
    options: dict[str, Any], user: str, customer: str, start: str, tmp_path: Path
) -> None:
    rows, _ = run("asterisk", "asterisk-master-21.csv", tmp_path, **options)
    assert (rows[0]["user"], rows[0]["customer"], rows[0]["start_time"]) == (user, customer, start)


def test_asterisk_ring_group_legs_are_one_call_and_a_utc_clock_is_corrected(tmp_path: Path) -> None:
    """A DID ringing three phones through Local channels writes seven rows for one call; the
    server's clock is UTC (its uniqueid epochs equal the written times)."""
    out = tmp_path / "cdrs.jsonl"
    summary = convert_file("asterisk", DATA / "asterisk-ring-group-utc.csv", out, ImportOptions())
    rows = read_jsonl(out)
    assert (summary.read, summary.calls, summary.converted, summary.rejected) == (9, 3, 3, 0)
    ring, direct, outbound = rows
    # the originating leg's user and direction (arena-pstn is a trunk's context), every leg's span,
    # the talk time of the phone that answered
    assert (ring["call_id"], ring["user"], ring["caller"], ring["direction"]) == (
        "1795836893.79", "0170001122", "0612345678", "inbound")
    assert (ring["start_time"], ring["answer_time"], ring["end_time"], ring["billsec"]) == (
        "2026-11-28T04:34:53+01:00", "2026-11-28T04:34:57+01:00", "2026-11-28T04:36:17+01:00", 79)
    assert (direct["direction"], direct["start_time"]) == ("inbound", "2026-11-28T10:12:00+01:00")
    assert (outbound["user"], outbound["direction"], outbound["callee"]) == ("301", "outbound", "0140001234")
    assert [w for w in summary.warnings] == [
        "the times were written in UTC, not Europe/Paris (their uniqueid epochs): corrected; --timezone with "
        "the switch's zone reads them as written"]
    assert "warning: 9 rows: the times were written in UTC" in format_import(summary)
    # read in the switch's own zone: the same instants, no warning
    as_written = convert_file("asterisk", DATA / "asterisk-ring-group-utc.csv", tmp_path / "utc.jsonl",
                              ImportOptions(timezone=ZoneInfo("UTC")))
    assert not as_written.warnings
    assert [datetime.fromisoformat(r["start_time"]) for r in read_jsonl(tmp_path / "utc.jsonl")] == [
        datetime.fromisoformat(r["start_time"]) for r in rows]


def test_asterisk_ring_group_raises_no_fair_use_alert(tmp_path: Path) -> None:
    """Each leg as a call made the external caller a user with seven simultaneous calls."""
    out = tmp_path / "cdrs.jsonl"
    convert_file("asterisk", DATA / "asterisk-ring-group-utc.csv", out, ImportOptions())
    settings = Settings()
    plans, rates = load_plans_and_rates(settings)
    engine, store = build_processor(settings, plans, rates).fairuse, MemoryStore()
    alerts = [a for row in read_jsonl(out) for a in engine.on_call(store, decode_cdr(orjson.dumps(row))).alerts]
    assert alerts == []
    assert {row["user"] for row in read_jsonl(out)} == {"0170001122", "301"}


@pytest.mark.parametrize("context", ["from-trunk", "from-pstn", "ext-did", "public", "arena-pstn", "pstn-in",
                                     "incoming_sip", "from-sip-external"])
def test_trunk_contexts_are_inbound(context: str) -> None:
    assert re.search(DEFAULT_INBOUND_CONTEXTS, context)


@pytest.mark.parametrize("context", ["from-internal", "TimeDelay", "default", "macro-dial-one", "didier-office"])
def test_internal_contexts_are_not_inbound(context: str) -> None:
    assert not re.search(DEFAULT_INBOUND_CONTEXTS, context)


# ---------------------------------------------------------------------------------- FreeSWITCH


def test_freeswitch_directions_users_and_dispositions(tmp_path: Path) -> None:
    rows, _ = run("freeswitch", "freeswitch-epoch.jsonl", tmp_path)
    got = [(r["call_id"].split("@")[0], r["user"], r["direction"], r["disposition"], r["callee"]) for r in rows]
    assert got == [
        ("3c26700d5b8a4d1f", "acme", "outbound", "ANSWERED", "0612345678"),  # accountcode
        ("4d3781ae6c9b5e20", "1002", "outbound", "NO ANSWER", "+33145678901"),  # NO_ANSWER; sip_from_user
        ("5e4892bf7dac6f31", "1001", "outbound", "BUSY", "0033298765432"),  # USER_BUSY
        ("6f59a3c08ebd7042", "1003", "outbound", "NO ANSWER", "0687654321"),  # ORIGINATOR_CANCEL
        ("7a6ab4d19fce8153", "1001", "inbound", "ANSWERED", "0970123456"),  # context public: from the PSTN
        ("8b7bc5e2a0df9264", "1003", "outbound", "FAILED", "0899123456"),  # CALL_REJECTED
        ("be0ef815d302c597", "1002", "inbound", "ANSWERED", "1002"),  # an outbound leg: FreeSWITCH rang 1002
    ]
    assert rows[0]["start_time"] == "2026-11-05T09:15:02+01:00" and rows[0]["billsec"] == 142


def fs_record(**variables: str) -> dict[str, Any]:
    """A mod_json_cdr record with an empty ``direction`` variable and no channel_data direction, as
    some FreeSWITCH setups write them."""
    return {"channel_data": {"state": "CS_REPORTING"}, "variables": {
        "direction": "", "sip_from_user": "1001", "sip_req_user": "0612345678", "sip_to_user": "0612345678",
        "sip_call_id": "a1b2c3@10.0.0.5", "start_epoch": "1793866502", "answer_epoch": "1793866509",
        "end_epoch": "1793866651", "billsec": "142", "hangup_cause": "NORMAL_CLEARING", **variables}}


@pytest.mark.parametrize(("variables", "direction", "user"), [
    ({"call_direction": "outbound"}, "outbound", "1001"),
    ({"call_direction": "local"}, "outbound", "1001"),  # to another user of the switch
    ({"call_direction": "inbound", "dialed_user": "1002"}, "inbound", "1002"),
    ({"Caller-Direction": "inbound", "context": "public", "dialed_user": "1002"}, "inbound", "1002"),
    ({"context": "default"}, "outbound", "1001"),  # nothing says: the leg into the switch, from a user
    ({"context": "public", "dialed_user": "1002"}, "inbound", "1002"),  # ... from a trunk
])
def test_freeswitch_without_a_direction_infers_it(variables: dict[str, str], direction: str, user: str) -> None:
    opts = ImportOptions()
    row = convert_freeswitch(fs_record(**variables), opts, "")
    assert (row["direction"], row["user"]) == (direction, user)
    decode_cdr(orjson.dumps(row))
    assert sum(opts.notes.values()) == (0 if "Caller-Direction" in variables else 1)


def test_freeswitch_with_an_unknown_direction_is_rejected() -> None:
    with pytest.raises(Exception, match="direction: expected inbound or outbound, got 'sideways'"):
        convert_freeswitch(fs_record(direction="sideways"), ImportOptions(), "")


def test_freeswitch_uepoch_keeps_milliseconds_and_decodes_url_encoded_values(tmp_path: Path) -> None:
    rows, _ = run("freeswitch", "freeswitch-uepoch.jsonl", tmp_path)
    first = rows[0]
    assert first["call_id"] == "c1f0a926e413d6a8@192.168.1.20"  # %40 in the file
    assert (first["start_time"], first["answer_time"], first["end_time"]) == (
        "2026-11-05T09:15:02.123+01:00", "2026-11-05T09:15:09.250+01:00", "2026-11-05T09:17:31.999+01:00")
    by_id = {r["call_id"].split("@")[0]: r for r in rows}
    assert by_id["e312cb480635f8ca"]["disposition"] == "ANSWERED"  # answered, then MEDIA_TIMEOUT
    assert by_id["f423dc591746a9db"]["disposition"] == "FAILED"  # NORMAL_CLEARING, never answered
    assert by_id["0534ed6a2857baec"]["caller"] == "+33612345678"  # %2B decoded


def test_freeswitch_one_object_per_file(tmp_path: Path) -> None:
    rows, _ = run("freeswitch", "freeswitch", tmp_path)
    assert rows == [{
        "event": "end", "call_id": "a8e3c1d4f5b60718@192.168.1.30", "user": "acme", "customer": "acme",
        "caller": "1004", "callee": "0611223344", "direction": "outbound",
        "start_time": "2026-11-05T16:00:00.250+01:00", "answer_time": "2026-11-05T16:00:06.500+01:00",
        "end_time": "2026-11-05T16:15:06.750+01:00", "billsec": 900, "disposition": "ANSWERED",
    }]
    single = next((DATA / "freeswitch").iterdir())
    rows_file, _ = run("freeswitch", f"freeswitch/{single.name}", tmp_path)
    assert rows_file == rows


@pytest.mark.parametrize(
    ("cause", "answered", "disposition"),
    [
        ("NORMAL_CLEARING", True, "ANSWERED"),
        ("NORMAL_CLEARING", False, "FAILED"),
        ("NO_ANSWER", False, "NO ANSWER"),
        ("ORIGINATOR_CANCEL", False, "NO ANSWER"),
        ("NO_USER_RESPONSE", False, "NO ANSWER"),
        ("USER_BUSY", False, "BUSY"),
        ("UNALLOCATED_NUMBER", False, "FAILED"),
        ("NORMAL_TEMPORARY_FAILURE", False, "FAILED"),
    ],
)
def test_freeswitch_hangup_causes(cause: str, answered: bool, disposition: str) -> None:
    variables = {"direction": "inbound", "sip_call_id": "x@y", "sip_from_user": "1001", "sip_req_user": "0612345678",
                 "start_epoch": "1793952000", "answer_epoch": "1793952005" if answered else "0",
                 "end_epoch": "1793952065", "billsec": "60" if answered else "0", "hangup_cause": cause}
    row = convert_freeswitch({"variables": variables}, ImportOptions(), "")
    assert row["disposition"] == disposition
    assert decode_cdr(orjson.dumps(row))


# ------------------------------------------------------------------------------------ Kamailio


def test_kamailio_rows_are_answered_dialogs(tmp_path: Path) -> None:
    rows, _ = run("kamailio", "kamailio-acc-cdrs.csv", tmp_path)
    first = rows[0]
    assert first["answer_time"] == first["start_time"] == "2026-11-06T09:00:05.123+01:00"
    assert (first["billsec"], first["disposition"], first["user"]) == (180, "ANSWERED", "1001")
    assert rows[2]["callee"] == "0033145678901"  # dst_user empty: dst_ouser


def test_kamailio_jsonl_sip_codes_directions_and_epochs(tmp_path: Path) -> None:
    rows, _ = run("kamailio", "kamailio-acc-cdrs.jsonl", tmp_path)
    assert [(r["disposition"], r["direction"], r["user"]) for r in rows] == [
        ("ANSWERED", "outbound", "1001"), ("BUSY", "outbound", "1001"), ("ANSWERED", "inbound", "1002"),
        ("ANSWERED", "outbound", "1003")]
    assert rows[1]["answer_time"] is None and rows[1]["billsec"] == 0
    assert rows[3]["start_time"] == "2026-11-06T14:10:00+01:00"  # epoch seconds in the export
    inbound, _ = run("kamailio", "kamailio-acc-cdrs.csv", tmp_path, direction="inbound")
    assert (inbound[0]["direction"], inbound[0]["user"]) == ("inbound", "0612345678")


def test_kamailio_acc_table_invite_and_bye_rows_are_paired_into_calls(tmp_path: Path) -> None:
    out = tmp_path / "cdrs.jsonl"
    summary = convert_file("kamailio", DATA / "kamailio-acc.csv", out, ImportOptions())
    rows = read_jsonl(out)
    rejects = {r["line"]: r["reason"] for r in read_jsonl(summary.rejects_path)}
    assert (summary.read, summary.calls, summary.converted) == (9, 6, 4)
    got = [(r["call_id"].split("@")[0], r["user"], r["callee"], r["disposition"], r["billsec"]) for r in rows]
    assert got == [
        ("c9e1f0a2b3", "1001", "0612345678", "ANSWERED", 180),  # INVITE 200 at 09:00:05, BYE at 09:03:05
        ("d0f2a1b3c4", "1002", "0698765432", "BUSY", 0),  # 486
        ("e1a3b2c4d5", "1001", "0140001234", "ANSWERED", 150),  # a re-INVITE; the callee's BYE
        ("b4d6e5f7a8", "1002", "+442071234567", "NO ANSWER", 0),  # 487: cancelled
    ]
    assert (rows[0]["answer_time"], rows[0]["end_time"]) == ("2026-11-06T09:00:05+01:00", "2026-11-06T09:03:05+01:00")
    assert re.search(r"answered but no BYE", rejects[8]) and re.search(r"BYE of callid .* without its INVITE", rejects[9])


def test_kamailio_csv_without_time_columns_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "acc.csv"
    bad.write_text("id;callid;src_user\n1;abc;1001\n")
    with pytest.raises(ConfigError, match=r"header line \(1\) has no start_time, end_time column"):
        convert_file("kamailio", bad, tmp_path / "out.jsonl", ImportOptions())


# ----------------------------------------------------------------------------------------- CLI


def test_default_rejects_path_is_next_to_the_output() -> None:
    assert default_rejects_path(Path("/x/cdrs.jsonl")) == Path("/x/cdrs.rejects.jsonl")
    assert default_rejects_path(Path("/x/cdrs")) == Path("/x/cdrs.rejects.jsonl")


def test_cli_import_prints_counts_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cdrs.jsonl"
    code = main(["import", "asterisk", str(DATA / "asterisk-master-16.csv"), "--out", str(out), "--timezone",
                 "Europe/Paris"])
    assert code == 0
    text = capsys.readouterr().out
    assert "15 rows read, 7 converted" in text and "8 rejected" in text
    rejects = read_jsonl(tmp_path / "cdrs.rejects.jsonl")
    assert [r["line"] for r in rejects] == [7, 8, 9, 10, 11, 12, 13, 14]
    assert all(set(r) == {"source", "line", "reason", "raw"} for r in rejects)
    custom = tmp_path / "bad-rows.jsonl"
    assert main(["import", "kamailio", str(DATA / "kamailio-acc-cdrs.csv"), "--out", str(out), "--rejects",
                 str(custom)]) == 0
    assert len(read_jsonl(custom)) == 7


def test_cli_import_of_a_file_where_every_row_is_bad_exits_2(tmp_path: Path) -> None:
    garbage = tmp_path / "Master.csv"
    garbage.write_bytes(b"\x00\x01binary\xff\n" * 3)
    assert main(["import", "asterisk", str(garbage), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert len(read_jsonl(tmp_path / "o.rejects.jsonl")) == 3 and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["asterisk", "{missing}"], "no such file"),
        (["asterisk", "{a16}", "--user-field", "caller"], "--user-field: 'caller' is not a Master.csv column"),
        (["kamailio", "{a16}", "--timezone", "Europe/Atlantis"], "--timezone: unknown time zone"),
        (["freeswitch", "{fs}", "--inbound-contexts", "("], "--inbound-contexts: not a regular expression"),
        (["kamailio", "{dir}"], "is a directory"),
    ],
)
def test_cli_import_exits_2_on_unreadable_input_or_bad_options(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {"missing": tmp_path / "nope.csv", "a16": DATA / "asterisk-master-16.csv",
             "fs": DATA / "freeswitch-epoch.jsonl", "dir": tmp_path}
    args = [a.format(**paths) for a in argv]
    assert main(["import", *args, "--out", str(tmp_path / "out.jsonl")]) == 2
    assert message in capsys.readouterr().err


def test_imported_rows_replay_offline(tmp_path: Path) -> None:
    """Converted files are `cdrs` streams: the engine takes every row (no DLQ)."""
    from streams.tools.replay import read_stream, run_offline
    from streams.settings import Settings

    shutil.copy(DATA / "asterisk-master-21.csv", tmp_path / "Master.csv")
    out = tmp_path / "cdrs.jsonl"
    convert_file("asterisk", tmp_path / "Master.csv", out, ImportOptions())
    _, counts = run_offline(Settings(), read_stream(out, "cdrs", "start_time"))
    assert counts == {("cdrs", "ok"): 4}
