"""Malformed messages interleaved with good ones, through the embedded broker and a real worker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.tools.replay import InputMessage, replay
from streams.settings import Settings
from tests.brokers import Broker

pytestmark = pytest.mark.integration


def good_cdr(n: int) -> dict[str, Any]:
    minute = n % 50
    return {
        "event": "end", "call_id": f"good-{n}", "user": f"user{n % 7}", "customer": "acme",
        "caller": "0140000000", "callee": f"06{n:08d}", "direction": "outbound",
        "start_time": f"2026-11-{1 + n // 50 % 28:02d}T10:{minute:02d}:00+01:00",
        "answer_time": f"2026-11-{1 + n // 50 % 28:02d}T10:{minute:02d}:10+01:00",
        "end_time": f"2026-11-{1 + n // 50 % 28:02d}T10:{minute:02d}:40+01:00",
        "billsec": 30, "disposition": "ANSWERED",
    }


def bad_values() -> list[bytes]:
    base = good_cdr(0)
    broken: list[dict[str, Any]] = [
        {k: v for k, v in base.items() if k != "callee"},
        base | {"billsec": "30"},
        base | {"billsec": -1},
        base | {"billsec": 10**12},
        base | {"direction": "sideways"},
        base | {"event": "middle"},
        base | {"start_time": "2026-11-01 10:00:00"},
        base | {"start_time": "yesterday"},
        base | {"end_time": "2026-10-01T10:00:00+01:00"},
        base | {"start_time": "1970-01-01T00:00:00Z", "answer_time": None, "end_time": "1970-01-01T00:00:01Z",
                "billsec": 0, "disposition": "FAILED"},
        base | {"billsec": 500},
        base | {"answer_time": None},
        base | {"user": ""},
        base | {"user": 42},
    ]
    values = [orjson.dumps(b) for b in broken]
    values += [
        b"",
        b"{",
        b"null",
        b"[1, 2, 3]",
        b'"just a string"',
        "é".encode("latin-1") + b'{"event": "end"}',
        b"\xff\xfe\x00{}",
        orjson.dumps(base | {"callee": "0" * 100_000}),
    ]
    return values


async def test_every_bad_message_lands_in_the_dlq_and_every_good_one_is_processed(
    broker: Broker, settings: Settings
) -> None:
    bad = bad_values()
    messages: list[InputMessage] = []
    goods = 0
    bad_origins = set()
    for i in range(400):
        origin = f"cdrs.jsonl:{i + 1}"  # as read_stream names a line
        if i % 3 == 0 and bad:
            messages.append(InputMessage("cdrs", b"user0", bad.pop(), 0.0, origin))
            bad_origins.add(origin)
        else:
            messages.append(InputMessage("cdrs", f"user{goods % 7}".encode(), orjson.dumps(good_cdr(goods)), 0.0,
                                         origin))
            goods += 1
    n_bad = len(bad_values())
    result = await replay(settings, messages, broker_url=broker.url, timeout_s=120)

    assert result.counts.get(("cdrs", "dlq")) == n_bad
    assert len(result.dlq) == n_bad
    assert all(row["reason"] for row in result.dlq)
    # each rejected message says where it was read, beside its topic/partition/offset
    assert {row["input"] for row in result.dlq} == bad_origins
    assert result.counts.get(("cdrs", "ok"), 0) + result.counts.get(("cdrs", "late"), 0) == goods
    # the raw bytes of every rejected message are kept as they were sent
    sent_bad = sorted(v.decode("utf-8", errors="replace") for v in bad_values())
    assert sorted(row["value"] for row in result.dlq) == sent_bad
    reasons = " | ".join(row["reason"] for row in result.dlq)
    for expected in ("missing required field(s): callee", "billsec", "direction", "not valid UTF-8 JSON",
                     "exceeds the 65536-byte limit", "outside 2000-2099", "before start_time"):
        assert expected in reasons
