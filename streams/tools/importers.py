"""Converters from real switch CDR files to ``cdrs`` ``end`` payloads: the ``cdrwatch import`` command.

Formats:

* ``asterisk`` — ``cdr_csv``'s ``Master.csv``: no header, 16 columns (``accountcode, src, dst,
  dcontext, clid, channel, dstchannel, lastapp, lastdata, start, answer, end, duration, billsec,
  disposition, amaflags``), followed by ``uniqueid`` (``loguniqueid``), ``userfield``
  (``loguserfield``) and ``peeraccount, linkedid, sequence`` (``newcdrcolumns``) when enabled:
  16, 17, 18, 19, 20 or 21 columns. The rows of one ``linkedid`` (ring groups, queues, transfers)
  are one call. Times are the switch's local time (``--timezone``; ``UTC`` for ``usegmtime=yes``);
  where the ``uniqueid`` epoch shows another zone, they are corrected from it, with a warning.
* ``freeswitch`` — ``mod_json_cdr`` records: one JSON object per file (a directory of ``*.json``
  files is read in name order), a JSON array, or one object per line. The ``variables`` object
  gives ``sip_call_id`` (else ``uuid``), ``start/answer/end_uepoch`` (else ``*_epoch``),
  ``billsec``, ``hangup_cause``, ``direction`` (else ``call_direction``, else the context),
  ``sip_from_user``, ``sip_req_user`` /
  ``destination_number``, ``accountcode``; URL-encoded values are decoded.
* ``kamailio`` — ``acc`` module CDR rows (``acc_cdrs`` with the usual ``cdr_extra``): CSV with a
  header line (comma, semicolon, tab or ``|``) or one JSON object per line, with ``start_time``,
  ``end_time``, ``duration``, ``callid``, ``src_user``, ``dst_user`` (optional ``dst_ouser``,
  ``sip_code``, ``direction``). A CDR row is an established dialog: ``start_time`` is when it was
  answered, so ``answer_time = start_time``. The plain ``acc`` table's rows (``method``, ``time``:
  an INVITE's final reply, a BYE) are paired into calls by ``callid``.

Every converted row is checked with ``streams.codecs.decode_cdr`` — what a worker would accept;
a row that cannot be converted goes to the rejects file with its line number and the reason.
Pure apart from reading the input and writing the two output files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ..codecs import cdr_payload, decode_cdr
from ..core.errors import ConfigError, InvalidRecord
from ..checks import count, input_file, output_file

__all__ = [
    "ASTERISK_COLUMNS",
    "FORMATS",
    "ImportOptions",
    "ImportSummary",
    "Reject",
    "convert_file",
    "format_import",
    "register",
]

FORMATS = ("asterisk", "freeswitch", "kamailio")

ASTERISK_COLUMNS = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
)
# cdr_csv appends uniqueid (loguniqueid), userfield (loguserfield), then peeraccount, linkedid,
# sequence (newcdrcolumns); a count that two option sets could produce is read as the commoner one
_ASTERISK_EXTRA: dict[int, tuple[str, ...]] = {
    16: (),
    17: ("uniqueid",),
    18: ("uniqueid", "userfield"),
    19: ("peeraccount", "linkedid", "sequence"),
    20: ("uniqueid", "peeraccount", "linkedid", "sequence"),
    21: ("uniqueid", "userfield", "peeraccount", "linkedid", "sequence"),
}
_ASTERISK_ALL = ASTERISK_COLUMNS + ("uniqueid", "userfield", "peeraccount", "linkedid", "sequence")
_ASTERISK_DISPOSITIONS = {
    "ANSWERED": "ANSWERED", "NO ANSWER": "NO ANSWER", "BUSY": "BUSY", "FAILED": "FAILED", "CONGESTION": "FAILED",
}

# Dialplan contexts where calls from the outside world land (Asterisk/FreePBX, FreeSWITCH "public"):
# from-trunk, from-pstn, ext-did, public, and site-named ones such as "stadion-pstn" or "pstn-in".
DEFAULT_INBOUND_CONTEXTS = (r"(^|[-_.])(trunk|pstn|did|external|provider|inbound|incoming|public)([-_.]|$)"
                            r"|^from-sip-external\b")
# Asterisk's uniqueid starts with the epoch second its channel was created: the row's start. A
# difference of whole quarter hours (within a day) between it and the written start means the
# times were not written in the zone they are read in.
_MAX_CLOCK_SHIFT_S = 14 * 3600

_FS_NO_ANSWER = {"NO_ANSWER", "ORIGINATOR_CANCEL", "NO_USER_RESPONSE"}
_FS_BUSY = {"USER_BUSY"}


class ImportInputError(ConfigError):
    """An input file or option that makes the whole import impossible (exit 2)."""


class RowError(Exception):
    """Why one record cannot become a ``cdrs`` payload."""


@dataclass(frozen=True)
class ImportOptions:
    timezone: ZoneInfo = ZoneInfo("Europe/Paris")
    user_field: str | None = None
    customer: str | None = None
    customer_field: str | None = None
    inbound_contexts: re.Pattern[str] = re.compile(DEFAULT_INBOUND_CONTEXTS)
    direction: str | None = None  # kamailio: rows without a `direction` column
    # what the converters noticed and corrected (warning → rows), for the summary
    notes: Counter[str] = field(default_factory=Counter, compare=False)


@dataclass(frozen=True)
class Reject:
    source: str
    line: int
    reason: str
    raw: str

    def payload(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason, "raw": self.raw[:4000]}


@dataclass
class ImportSummary:
    fmt: str
    source: Path
    out: Path
    rejects_path: Path
    read: int = 0  # rows (lines) of the file
    calls: int = 0  # records made of them (the rows of one Asterisk linkedid, of one Kamailio acc callid)
    converted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason kind → its first row, values included
    warnings: Counter[str] = field(default_factory=Counter)  # corrections made → rows


# --------------------------------------------------------------------------------------------
# helpers


def iso_time(value: datetime) -> str:
    """A payload's time: milliseconds when there are any, else whole seconds."""
    return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")


def _end_cdr(call_id: str, user: str, customer: str, caller: str, callee: str, direction: str, start: datetime,
             answer: datetime | None, end: datetime, billsec: int, disposition: str) -> dict[str, Any]:
    """A ``cdrs`` ``end`` payload, whatever format it came from."""
    return cdr_payload("end", call_id, user, customer, caller, callee, direction, iso_time(start),
                       None if answer is None else iso_time(answer), iso_time(end), billsec, disposition)


_LOCAL_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:?\d{2})?")


def _local_time(text: str, tz: ZoneInfo, what: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS[.ffffff][offset]``; without an offset, a wall-clock time in ``tz``."""
    match = _LOCAL_TIME.fullmatch(text.strip())
    if match is None:
        raise RowError(f"{what}: not a date-time: {text!r}")
    try:
        value = datetime.fromisoformat(text.strip().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise RowError(f"{what}: not a date-time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value


def _int(text: Any, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise RowError(f"{what}: not an integer: {text!r}") from None
    if value < 0:
        raise RowError(f"{what}: negative: {value}")
    return value


def _clean(value: Any) -> str:
    """A field as text; SQL NULLs of database exports (``NULL``, ``\\N``) are empty."""
    if value is None:
        return ""
    text = str(value).strip()
    return "" if text in ("NULL", "\\N") else text


def _customer(opts: ImportOptions, fields: dict[str, str], user: str) -> str:
    if opts.customer:
        return opts.customer
    if opts.customer_field:
        value = fields.get(opts.customer_field, "")
        if not value:
            raise RowError(f"customer field {opts.customer_field!r} is missing or empty")
        return value
    return user


def _user(opts: ImportOptions, fields: dict[str, str], default: list[str]) -> str:
    if opts.user_field:
        value = fields.get(opts.user_field, "")
        if not value:
            raise RowError(f"user field {opts.user_field!r} is missing or empty")
        return value
    for name in default:
        if fields.get(name):
            return fields[name]
    raise RowError(f"no user: empty {', '.join(default)}")


# --------------------------------------------------------------------------------------------
# Asterisk Master.csv


def _asterisk_records(text: str) -> Iterator[tuple[int, str, list[dict[str, str]] | RowError]]:
    """cdr_csv writes each CDR on one line (it does not quote newlines). With ``linkedid``
    (``newcdrcolumns``) the rows of one call — a ring group's or a queue's legs, a transfer's —
    become one record, at the line of its first row."""
    calls: dict[str, tuple[int, list[str], list[dict[str, str]]]] = {}
    records: list[tuple[int, str, list[dict[str, str]] | RowError] | str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            records.append((line_no, line, RowError(f"not a CSV row ({exc})")))
            continue
        fields = _asterisk_fields(row)
        linkedid = fields.get("linkedid", "") if isinstance(fields, dict) else ""
        if not linkedid or (isinstance(fields, dict) and fields.get("accountcode") == "accountcode"):
            records.append((line_no, line, fields if isinstance(fields, RowError) else [fields]))
        elif linkedid in calls and line in calls[linkedid][1]:  # the same row again: a duplicate of the call
            records.append((line_no, line, [fields]))  # type: ignore[list-item]
        elif linkedid in calls:
            calls[linkedid][1].append(line)
            calls[linkedid][2].append(fields)  # type: ignore[arg-type]
        else:
            calls[linkedid] = (line_no, [line], [fields])  # type: ignore[list-item]
            records.append(linkedid)
    for record in records:
        if isinstance(record, str):
            line_no, lines, legs = calls[record]
            yield line_no, "\n".join(lines), legs
        else:
            yield record


def _asterisk_fields(row: list[str]) -> dict[str, str] | RowError:
    if not row or (len(row) == 1 and not row[0].strip()):
        return RowError("empty line")
    extra = _ASTERISK_EXTRA.get(len(row))
    if extra is None:
        return RowError(f"expected 16 to 21 columns (Master.csv), got {len(row)}")
    return dict(zip(ASTERISK_COLUMNS + extra, (c.strip() for c in row)))


@dataclass(frozen=True)
class _Leg:
    fields: dict[str, str]
    start: datetime
    answer: datetime | None
    end: datetime
    billsec: int
    disposition: str


def _asterisk_leg(f: dict[str, str], opts: ImportOptions) -> _Leg:
    if f["accountcode"] == "accountcode" and f["start"] == "start":
        raise RowError("a header line (Master.csv has none)")
    tz = opts.timezone
    if not f["start"]:
        raise RowError("start is empty")
    if not f["end"]:
        raise RowError("end is empty")
    start = _local_time(f["start"], tz, "start")
    end = _local_time(f["end"], tz, "end")
    disposition = _ASTERISK_DISPOSITIONS.get(f["disposition"].upper())
    if disposition is None:
        raise RowError(f"disposition: unknown {f['disposition']!r} (ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION)")
    billsec = _int(f["billsec"], "billsec")
    _int(f["duration"], "duration")
    # an answer time is only meaningful on an answered call (some versions copy start into it)
    answer = _local_time(f["answer"], tz, "answer") if f["answer"] and disposition == "ANSWERED" else None
    shift = _clock_shift(f.get("uniqueid", ""), start)
    if shift:
        written = start.utcoffset() or timedelta(0)  # the zone the times were written in: tz's offset less the shift
        offset = (written - shift).total_seconds()
        moved = [t if t is None else (t + shift).astimezone(tz) for t in (start, answer, end)]
        start, answer, end = moved[0] or start, moved[1], moved[2] or end
        opts.notes[f"the times were written in UTC{_offset_text(offset)}, not {tz.key} (their uniqueid epochs): "
                   f"corrected; --timezone with the switch's zone reads them as written"] += 1
    return _Leg(f, start, answer, end, billsec, disposition)


def _clock_shift(uniqueid: str, start: datetime) -> timedelta | None:
    """How far the written start is from the epoch second in ``uniqueid``, if that is a clock in
    another zone (whole quarter hours, less than a day); None when they agree or cannot be
    compared."""
    epoch = uniqueid.partition(".")[0]
    if not epoch.isdigit():
        return None
    delta = int(epoch) - start.timestamp()
    quarters = round(delta / 900)
    if quarters == 0 or abs(delta) > _MAX_CLOCK_SHIFT_S or abs(delta - quarters * 900) > 60:
        return None
    return timedelta(seconds=quarters * 900)


def _offset_text(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes == 0:
        return ""
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _talk_seconds(legs: list[_Leg]) -> int:
    """The seconds during which some leg was talking: the union of the answered legs' last
    ``billsec`` seconds (parallel ring-group legs count once, a transfer's legs add up)."""
    spans = sorted((leg.end.timestamp() - leg.billsec, leg.end.timestamp()) for leg in legs if leg.billsec)
    total, reach = 0.0, float("-inf")
    for begin, finish in spans:
        if finish > reach:
            total += finish - max(begin, reach)
            reach = finish
    return int(total + 0.5)


def convert_asterisk(f: list[dict[str, str]], opts: ImportOptions, raw: str) -> dict[str, Any]:
    """One call: a row, or the rows of one ``linkedid``. Its user, direction and callee are the
    originating channel's (the leg whose uniqueid is the linkedid, else the earliest); its times
    span every leg's; it is answered if a leg was, and talked while any leg did."""
    legs = [_asterisk_leg(fields, opts) for fields in f]
    first = min(legs, key=lambda leg: (leg.fields.get("uniqueid", "") != leg.fields.get("linkedid", ""), leg.start))
    g = first.fields
    inbound = bool(opts.inbound_contexts.search(g["dcontext"]))
    direction = "inbound" if inbound else "outbound"
    user = _user(opts, g, ["accountcode", "dst" if inbound else "src"])
    if not g["dst"]:
        raise RowError("dst is empty")
    answered = [leg for leg in legs if leg.disposition == "ANSWERED"]
    if answered:
        disposition = "ANSWERED"
        billsec = _talk_seconds(answered)
        times = [leg.answer for leg in answered if leg.answer is not None]
        answer = min(times) if times else None
    else:
        disposition, billsec, answer = first.disposition, first.billsec, None
    if g.get("linkedid"):
        call_id = g["linkedid"]
    elif g.get("uniqueid"):
        call_id = g["uniqueid"] + (f"-{g['sequence']}" if g.get("sequence") else "")
    else:  # 16 columns: a stable id from the row itself (the same line twice is a duplicate)
        call_id = "ast-" + hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()
    return _end_cdr(call_id, user, _customer(opts, g, user), g["src"], g["dst"], direction,
                    min(leg.start for leg in legs), answer, max(leg.end for leg in legs), billsec, disposition)


# --------------------------------------------------------------------------------------------
# FreeSWITCH mod_json_cdr


def _freeswitch_records(path: Path) -> Iterator[tuple[str, int, str, Any]]:
    """(source, line, raw, parsed object | RowError) for a file or a directory of files."""
    files = sorted(p for p in path.iterdir() if p.suffix == ".json") if path.is_dir() else [path]
    for file in files:
        text = _read_text(file)
        source = str(file)
        try:
            whole = orjson.loads(text)
        except orjson.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            yield source, 1, text.strip(), whole
            continue
        if isinstance(whole, list):  # a JSON array of records: "line" is the record's position
            for n, item in enumerate(whole, start=1):
                yield source, n, orjson.dumps(item).decode(), item
            continue
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield source, line_no, line, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield source, line_no, line, RowError(f"not a JSON object ({exc})")


def _caller_profile(record: dict[str, Any]) -> dict[str, Any]:
    flow = record.get("callflow")
    if isinstance(flow, list):
        flow = flow[0] if flow else None
    profile = flow.get("caller_profile") if isinstance(flow, dict) else None
    return profile if isinstance(profile, dict) else {}


def _fs_time(v: dict[str, str], name: str, tz: ZoneInfo, required: bool) -> datetime | None:
    """``name_uepoch`` (µs) if present, else ``name_epoch`` (s); 0 or absent means never."""
    micro = v.get(f"{name}_uepoch", "")
    if micro:
        value = _int(micro, f"{name}_uepoch")
        if value:
            return datetime.fromtimestamp(value // 1000 / 1000, timezone.utc).astimezone(tz)
    elif v.get(f"{name}_epoch", ""):
        value = _int(v[f"{name}_epoch"], f"{name}_epoch")
        if value:
            return datetime.fromtimestamp(value, timezone.utc).astimezone(tz)
    if required:
        raise RowError(f"no {name}_uepoch or {name}_epoch")
    return None


def convert_freeswitch(record: Any, opts: ImportOptions, raw: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise RowError(f"expected a JSON object, got {type(record).__name__}")
    variables = record.get("variables")
    if not isinstance(variables, dict):
        raise RowError("no variables object (not a mod_json_cdr record)")
    v = {str(k): unquote(_clean(val)) for k, val in variables.items() if not isinstance(val, (dict, list))}
    profile = {str(k): unquote(_clean(val)) for k, val in _caller_profile(record).items() if isinstance(val, str)}
    tz = opts.timezone
    start = _fs_time(v, "start", tz, True)
    end = _fs_time(v, "end", tz, True)
    answer = _fs_time(v, "answer", tz, False)
    assert start is not None and end is not None
    billsec = _int(v["billsec"], "billsec") if v.get("billsec") else (
        int((end - answer).total_seconds()) if answer else 0)
    cause = v.get("hangup_cause", "").upper()
    if answer is not None or billsec > 0:
        disposition = "ANSWERED"
        if answer is None:
            raise RowError(f"billsec {billsec} but no answer_uepoch/answer_epoch")
    elif cause in _FS_NO_ANSWER:
        disposition = "NO ANSWER"
    elif cause in _FS_BUSY:
        disposition = "BUSY"
    else:
        disposition = "FAILED"
    channel = record.get("channel_data")
    fs_direction = (v.get("direction") or str((channel if isinstance(channel, dict) else {}).get("direction", ""))
                    or v.get("Caller-Direction", "")).lower()
    call_direction = v.get("call_direction", "").lower()
    context = v.get("context") or profile.get("context", "")
    if fs_direction in ("inbound", "outbound"):
        # FreeSWITCH names legs from its own side: an "inbound" leg came into FreeSWITCH — from a
        # user's phone it is the user calling out, from a trunk (a public context) a call to the
        # user; an "outbound" leg is FreeSWITCH ringing the user's phone: a call to the user.
        if fs_direction == "inbound" and not opts.inbound_contexts.search(context):
            direction = "outbound"
        else:
            direction = "inbound"
    elif fs_direction:
        raise RowError(f"direction: expected inbound or outbound, got {fs_direction!r}")
    elif call_direction in ("inbound", "outbound", "local"):
        # the call's direction (FreeSWITCH 1.6+): from outside, or from a user (out, or to another user)
        direction = "inbound" if call_direction == "inbound" else "outbound"
        opts.notes["no direction variable: taken from call_direction"] += 1
    else:
        # the leg a switch logs is the one that came into it: from a trunk's context a call to the
        # user, from anywhere else the user calling out
        direction = "inbound" if opts.inbound_contexts.search(context) else "outbound"
        opts.notes[f"no direction, call_direction or Caller-Direction: {direction} from the context"] += 1
    dialled = v.get("sip_req_user") or v.get("destination_number") or profile.get("destination_number", "") \
        or v.get("sip_to_user", "")
    caller = v.get("sip_from_user") or v.get("caller_id_number") or profile.get("caller_id_number", "")
    fields = {**profile, **v}
    if direction == "outbound":
        user = _user(opts, fields, ["accountcode", "sip_from_user", "caller_id_number", "username"])
    else:
        user = _user(opts, fields, ["accountcode", "dialed_user", "sip_to_user", "sip_req_user", "destination_number"])
    if not dialled:
        raise RowError("no callee: sip_req_user and destination_number are empty")
    call_id = v.get("sip_call_id") or v.get("uuid") or v.get("call_uuid")
    if not call_id:
        raise RowError("no sip_call_id or uuid")
    return _end_cdr(call_id, user, _customer(opts, fields, user), caller, dialled, direction,
                    start, answer, end, billsec, disposition)


# --------------------------------------------------------------------------------------------
# Kamailio acc CDRs


_KAMAILIO_BUSY = {"486", "600"}
_KAMAILIO_NO_ANSWER = {"408", "480", "487"}


def _kamailio_records(text: str) -> Iterator[tuple[int, str, dict[str, str] | RowError]]:
    """acc_cdrs rows (a dialog each), or the plain acc table's transaction rows (``method`` and
    ``time``: an INVITE's final reply, then the BYE), paired into calls by ``callid``."""
    rows = list(_kamailio_rows(text))
    if not any(isinstance(f, dict) and "method" in f and "time" in f and "start_time" not in f for _, _, f in rows):
        yield from rows
        return
    yield from _pair_transactions(rows)


def _kamailio_rows(text: str) -> Iterator[tuple[int, str, dict[str, str] | RowError]]:
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return
    if lines[first].lstrip().startswith("{"):
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield n, line, RowError(f"not a JSON object ({exc})")
                continue
            if not isinstance(data, dict):
                yield n, line, RowError(f"expected a JSON object, got {type(data).__name__}")
                continue
            yield n, line, {str(k).lower(): _clean(v) for k, v in data.items()}
        return
    header_line = lines[first]
    delimiter = max(",;\t|", key=header_line.count)
    header = [h.strip().lower() for h in next(csv.reader([header_line], delimiter=delimiter))]
    missing = [h for h in ("start_time", "end_time") if h not in header]
    if missing and not {"method", "time"} <= set(header):
        raise ImportInputError(f"kamailio: the header line ({first + 1}) has no {', '.join(missing)} column, "
                               f"nor the acc table's method and time (got: {', '.join(header)})")
    for n in range(first + 1, len(lines)):
        line = lines[n]
        if not line.strip():
            continue
        try:
            row = next(csv.reader([line], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            yield n + 1, line, RowError(f"not a CSV row ({exc})")
            continue
        if len(row) != len(header):
            yield n + 1, line, RowError(f"expected {len(header)} columns as in the header, got {len(row)}")
            continue
        yield n + 1, line, {h: _clean(v) for h, v in zip(header, row)}


def _pair_transactions(rows: list[tuple[int, str, dict[str, str] | RowError]]
                       ) -> Iterator[tuple[int, str, dict[str, str] | RowError]]:
    """One call per ``callid``: answered at its first INVITE with a 2xx reply, ended by its BYE
    (the INVITE row's users: a BYE from the callee has them the other way round); a call whose
    INVITEs all failed is an unanswered attempt, at its last INVITE. Re-INVITEs, and methods
    other than INVITE and BYE, add nothing."""
    calls: dict[str, list[tuple[int, str, dict[str, str]]]] = {}
    for line, raw, fields in rows:
        if isinstance(fields, RowError):
            yield line, raw, fields
            continue
        method, call_id = fields.get("method", "").upper(), fields.get("callid") or fields.get("call_id", "")
        if method not in ("INVITE", "BYE"):
            continue
        if not call_id:
            yield line, raw, RowError(f"{method} row without a callid")
            continue
        calls.setdefault(call_id, []).append((line, raw, fields))
    for call_id, transactions in calls.items():
        line, raw = transactions[0][0], "\n".join(r for _, r, _ in transactions)
        invites = [f for _, _, f in transactions if f["method"].upper() == "INVITE"]
        byes = [f for _, _, f in transactions if f["method"].upper() == "BYE"]
        answered = [f for f in invites if f.get("sip_code", "").startswith("2")]
        if not invites:
            yield line, raw, RowError(f"BYE of callid {call_id!r} without its INVITE")
        elif answered and not byes:
            yield line, raw, RowError(f"INVITE of callid {call_id!r} answered but no BYE: the call had not ended "
                                      "when the table was dumped, or its BYE was not accounted")
        elif answered:
            invite = answered[0]
            yield line, raw, {**invite, "start_time": invite["time"], "end_time": byes[-1]["time"], "duration": "",
                              "callid": call_id}
        else:
            invite = invites[-1]
            yield line, raw, {**invite, "start_time": invite["time"], "end_time": invite["time"], "duration": "0",
                              "callid": call_id}


def _kamailio_time(value: str, tz: ZoneInfo, what: str) -> datetime:
    if not value:
        raise RowError(f"{what} is empty")
    if re.fullmatch(r"\d{9,10}(\.\d+)?", value):  # epoch seconds (some exports)
        return datetime.fromtimestamp(float(value), timezone.utc).astimezone(tz)
    return _local_time(value, tz, what)


def convert_kamailio(f: dict[str, str], opts: ImportOptions, raw: str) -> dict[str, Any]:
    tz = opts.timezone
    start = _kamailio_time(f.get("start_time", ""), tz, "start_time")
    end = _kamailio_time(f.get("end_time", ""), tz, "end_time")
    if f.get("duration"):
        try:
            seconds = float(f["duration"])
        except ValueError:
            raise RowError(f"duration: not a number: {f['duration']!r}") from None
        if seconds < 0:
            raise RowError(f"duration: negative: {seconds}")
    else:
        seconds = (end - start).total_seconds()
    code = f.get("sip_code", "")
    if not code or code.startswith("2"):
        disposition, answer, billsec = "ANSWERED", start, int(seconds + 0.5)
    else:
        disposition = "BUSY" if code in _KAMAILIO_BUSY else "NO ANSWER" if code in _KAMAILIO_NO_ANSWER else "FAILED"
        answer, billsec = None, 0
    direction = (f.get("direction") or opts.direction or "outbound").lower()
    if direction not in ("outbound", "inbound", "forwarded"):
        raise RowError(f"direction: expected outbound, inbound or forwarded, got {direction!r}")
    callee = f.get("dst_user") or f.get("dst_ouser", "")
    if not callee:
        raise RowError("no callee: dst_user and dst_ouser are empty")
    user = _user(opts, f, ["dst_user" if direction == "inbound" else "src_user"])
    call_id = f.get("callid") or f.get("call_id", "")
    if not call_id:
        raise RowError("callid is empty")
    return _end_cdr(call_id, user, _customer(opts, f, user), f.get("src_user", ""), callee, direction,
                    start, answer, end, billsec, disposition)


# --------------------------------------------------------------------------------------------
# driver


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    except OSError as exc:
        raise ImportInputError(f"{path}: cannot read ({exc.strerror})") from None


def _records(fmt: str, path: Path) -> Iterator[tuple[str, int, str, Any]]:
    if fmt == "freeswitch":
        yield from _freeswitch_records(path)
        return
    if path.is_dir():
        raise ImportInputError(f"{path}: is a directory ({fmt} reads one file)")
    text = _read_text(path)
    rows = _asterisk_records(text) if fmt == "asterisk" else _kamailio_records(text)
    for line, raw, parsed in rows:
        yield str(path), line, raw, parsed


_CONVERTERS: dict[str, Callable[[Any, ImportOptions, str], dict[str, Any]]] = {
    "asterisk": convert_asterisk,
    "freeswitch": convert_freeswitch,
    "kamailio": convert_kamailio,
}


def default_rejects_path(out: Path) -> Path:
    """``cdrs.jsonl`` → ``cdrs.rejects.jsonl`` (next to the output)."""
    return out.with_name(out.stem + ".rejects.jsonl") if out.suffix else out.with_name(out.name + ".rejects.jsonl")


def convert_file(fmt: str, source: Path, out: Path, opts: ImportOptions, rejects_path: Path | None = None) -> ImportSummary:
    """Convert ``source`` into ``out`` (JSONL of ``cdrs`` ``end`` payloads) and write the rows that
    could not be converted to ``rejects_path`` (JSONL of ``{source, line, reason, raw}``)."""
    if fmt not in _CONVERTERS:
        raise ImportInputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if not source.exists():
        raise ImportInputError(f"{source}: no such file")
    if fmt == "asterisk" and opts.user_field and opts.user_field not in _ASTERISK_ALL:
        raise ImportInputError(f"--user-field: {opts.user_field!r} is not a Master.csv column "
                               f"({', '.join(_ASTERISK_ALL)})")
    if fmt == "asterisk" and opts.customer_field and opts.customer_field not in _ASTERISK_ALL:
        raise ImportInputError(f"--customer-field: {opts.customer_field!r} is not a Master.csv column")
    rejects_path = rejects_path or default_rejects_path(out)
    summary = ImportSummary(fmt, source, out, rejects_path)
    convert = _CONVERTERS[fmt]
    seen: dict[str, int] = {}
    records = _records(fmt, source)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
        out_handle, rej_handle = out.open("wb"), rejects_path.open("wb")
    except OSError as exc:
        raise ImportInputError(f"cannot write {exc.filename}: {exc.strerror}") from None
    with out_handle, rej_handle:
        for src, line, raw, parsed in records:
            summary.calls += 1
            summary.read += 1 if fmt == "freeswitch" else raw.count("\n") + 1  # the rows paired into this call
            try:
                if isinstance(parsed, RowError):
                    raise parsed
                row = convert(parsed, opts, raw)
                encoded = orjson.dumps(row)
                try:
                    decode_cdr(encoded)
                except InvalidRecord as exc:
                    raise RowError(f"not a valid cdrs payload: {exc}") from None
                first = seen.get(row["call_id"])
                if first is not None:
                    raise RowError(f"duplicate call_id {row['call_id']!r} (first at line {first})")
                seen[row["call_id"]] = line
            except RowError as exc:
                reject = Reject(src, line, str(exc), raw)
                rej_handle.write(orjson.dumps(reject.payload()) + b"\n")
                summary.rejected += 1
                kind = _reason_kind(str(exc))
                summary.reasons[kind] += 1
                summary.examples.setdefault(kind, f"{src}:{line}: {exc}")
                continue
            out_handle.write(encoded + b"\n")
            summary.converted += 1
    summary.warnings.update(opts.notes)
    return summary


def _reason_kind(reason: str) -> str:
    """The reason without the row's own values, for the summary's counts."""
    return re.sub(r"'[^']*'|\d[\d:.T+-]*", "…", reason)[:90]


def format_import(summary: ImportSummary) -> str:
    lines = [
        f"{summary.fmt} {summary.source}: {summary.read} rows read"
        f"{f' ({summary.calls} calls)' if summary.calls != summary.read else ''}, {summary.converted} converted → {summary.out}, "
        f"{summary.rejected} rejected → {summary.rejects_path}",
    ]
    for reason, n in summary.reasons.most_common(10):
        lines.append(f"  {n:>6}  {reason}")
        lines.append(f"          e.g. {summary.examples[reason][:300]}")
    for warning, n in summary.warnings.most_common():
        lines.append(f"warning: {n} rows: {warning}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "import", description="Convert a switch's CDR file into `cdrs` `end` payloads, one JSON object per line, ready "
        "for `cdrwatch replay --cdrs`. Every row is validated as a worker would; rows that cannot be "
        "converted go to the rejects file with their line number and reason. Exit 0 when rows were converted "
        "(even if some were rejected, up to --max-rejects); 2 when the file cannot be read, nothing could be "
        "converted, or more rows than --max-rejects were rejected (the output is then not written).",
        epilog="formats:\n"
        "  asterisk    Master.csv of cdr_csv: no header, 16 columns (+ uniqueid, userfield, peeraccount, linkedid,\n"
        "              sequence when enabled: 17-21); the rows of one linkedid are one call. Local times\n"
        "              (--timezone), corrected with a warning where uniqueid shows another zone. user:\n"
        "              accountcode, else src (dst for inbound). direction: inbound when dcontext matches\n"
        "              --inbound-contexts.\n"
        "  freeswitch  mod_json_cdr JSON: one object per file (or a directory of *.json), an array, or JSONL.\n"
        "              user: accountcode, else sip_from_user (the dialled user for inbound). FreeSWITCH's\n"
        "              direction=inbound (a leg into the switch) from a user is an outbound call; from a\n"
        "              --inbound-contexts context (public) or direction=outbound it is inbound; without a\n"
        "              direction, call_direction, else the context.\n"
        "  kamailio    acc CDR rows: CSV with a header, or JSONL; start_time, end_time, duration, callid,\n"
        "              src_user, dst_user. user: src_user (dst_user for inbound). Rows are answered calls.\n"
        "              The plain acc table (method, time, callid, sip_code): INVITE and BYE rows paired.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=FORMATS, help="the switch that wrote FILE")
    parser.add_argument("file", type=Path, metavar="FILE", help="the CDR file (freeswitch: also a directory)")
    parser.add_argument("--out", type=Path, required=True, metavar="F", help="output JSONL of cdrs payloads")
    parser.add_argument("--rejects", type=Path, metavar="F", help="rejected rows (default: OUT's name + .rejects.jsonl)")
    parser.add_argument("--timezone", default="Europe/Paris", metavar="TZ",
                        help="zone of times without an offset (Asterisk, Kamailio), and of the output (Europe/Paris)")
    parser.add_argument("--user-field", metavar="NAME", help="source field that becomes `user` (default: see formats)")
    customer = parser.add_mutually_exclusive_group()
    customer.add_argument("--customer", metavar="NAME", help="`customer` of every row (default: the user)")
    customer.add_argument("--customer-field", metavar="NAME", help="source field that becomes `customer`")
    parser.add_argument("--inbound-contexts", default=DEFAULT_INBOUND_CONTEXTS, metavar="REGEX",
                        help="dialplan contexts of calls from outside (Asterisk dcontext, FreeSWITCH context); "
                        "default: a context named after a trunk, the PSTN, a DID, public, inbound … "
                        "(from-trunk, from-pstn, ext-did, arena-pstn, pstn-in; not from-internal)")
    parser.add_argument("--direction", choices=["outbound", "inbound"],
                        help="kamailio: direction of rows without a direction column (default outbound)")
    parser.add_argument("--max-rejects", type=count, metavar="N",
                        help="fail (exit 2, no output) when more than N rows are rejected (default: no limit)")
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> ImportOptions:
    try:
        tz = ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ImportInputError(f"--timezone: unknown time zone {args.timezone!r}") from None
    try:
        contexts = re.compile(args.inbound_contexts)
    except re.error as exc:
        raise ImportInputError(f"--inbound-contexts: not a regular expression ({exc})") from None
    return ImportOptions(timezone=tz, user_field=args.user_field, customer=args.customer,
                         customer_field=args.customer_field, inbound_contexts=contexts, direction=args.direction)


def run(args: argparse.Namespace) -> int:
    input_file(args.file, "FILE", allow_dir=args.format == "freeswitch")
    output_file(args.out, "--out")
    rejects = args.rejects or default_rejects_path(args.out)
    output_file(rejects, "--rejects")
    if rejects.resolve() == args.out.resolve() or rejects.resolve() == args.file.resolve():
        raise ImportInputError(f"--rejects {rejects}: must differ from FILE and --out")
    if args.out.resolve() == args.file.resolve():
        raise ImportInputError(f"--out {args.out}: would overwrite FILE")
    opts = options_from_args(args)
    summary = convert_file(args.format, args.file, args.out, opts, rejects)
    print(format_import(summary))
    failure = None
    if summary.read == 0:
        failure = f"no CDR rows in {args.file}"
    elif summary.converted == 0:
        failure = f"nothing converted: {summary.read} rows read, all rejected (reasons in {summary.rejects_path})"
    elif args.max_rejects is not None and summary.rejected > args.max_rejects:
        failure = f"{summary.rejected} rows rejected, more than --max-rejects {args.max_rejects}"
    if failure:
        args.out.unlink(missing_ok=True)
        raise ImportInputError(f"{failure}; {args.out} not written")
    return 0
