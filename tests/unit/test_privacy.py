"""Privacy and exposure: called numbers never sit in state in clear (keyed hash with
the secret from settings), no full phone number and no secret is logged at INFO, the secret never
shows in a repr, and the web views bind to loopback by default."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from functools import lru_cache
from typing import Any, Iterable

import orjson
import pytest

from streams.codecs import decode_cdr, decode_registration
from streams.processor import build_processor
from streams.settings import load_plans_and_rates
from streams.core.numbering import normalise
from streams.core.state import MemoryStore
from streams.tools.embedded import EmbeddedBroker
from streams.tools.replay import InputMessage, replay
from streams.tools.samples import build_sample
from streams.settings import SecretStr, Settings, settings_from_env

SECRET = "privacy-test-secret-0f9d8c7b"
OTHER_SECRET = "another-secret-for-the-same-stream"
MIN_DIGITS = 8


@lru_cache(maxsize=1)
def sample() -> Any:
    return build_sample(normal_users=40)


def phone_forms(numbers: Iterable[str]) -> set[str]:
    """Every way a number of at least 8 digits can show: as sent, its digits, its E.164 digits."""
    forms: set[str] = set()
    for number in numbers:
        digits = re.sub(r"\D", "", number)
        if len(digits) < MIN_DIGITS:
            continue
        forms |= {number, digits, normalise(number).digits}
        if digits.startswith("0") and len(digits) == 10:
            forms.add("33" + digits[1:])
    return {f for f in forms if len(re.sub(r"\D", "", f)) >= MIN_DIGITS}


def run_sample(secret: str) -> MemoryStore:
    settings = Settings(hash_secret=SecretStr(secret))
    plans, rates = load_plans_and_rates(settings)
    engine, store = build_processor(settings, plans, rates).fairuse, MemoryStore()
    stream = sample()
    events: list[tuple[str, dict[str, Any]]] = [("cdrs", p) for p in stream.cdrs]
    events += [("sip-registrations", p) for p in stream.registrations]
    events.sort(key=lambda e: str(e[1].get("end_time") or e[1].get("start_time") or e[1].get("time")))
    for topic, payload in events:
        raw = orjson.dumps(payload)
        if topic == "cdrs":
            engine.on_call(store, decode_cdr(raw))
        else:
            engine.on_registration(store, decode_registration(raw))
    return store


def numbers_by_period(store: MemoryStore) -> dict[tuple[str, str], set[int]]:
    return {key: set(state.numbers) for key, state in store.periods.items()}


# ------------------------------------------------------------------------------------ state


def test_encoded_state_holds_no_called_or_calling_number() -> None:
    store = run_sample(SECRET)
    blobs = [state.encode() for state in store.periods.values()] + [state.encode() for state in store.users.values()]
    assert sum(len(state.numbers) for state in store.periods.values()) > 500  # the test has something to find
    everything = b"\n".join(blobs).decode()
    callees = phone_forms(str(p["callee"]) for p in sample().cdrs)
    callers = phone_forms(str(p["caller"]) for p in sample().cdrs)
    assert len(callees) > 1000
    leaked = sorted(f for f in callees | callers if f in everything)
    assert not leaked, f"numbers in clear in the encoded state: {leaked[:10]}"


def test_the_number_hash_is_keyed_by_the_secret() -> None:
    first, again, other = run_sample(SECRET), run_sample(SECRET), run_sample(OTHER_SECRET)
    a, b, c = numbers_by_period(first), numbers_by_period(again), numbers_by_period(other)
    assert a == b  # stable across runs (and so across restarts and workers)
    assert a.keys() == c.keys()
    assert {k: len(v) for k, v in a.items()} == {k: len(v) for k, v in c.items()}  # same counts
    assert max(len(v) for v in a.values()) > 150  # abuse-distinct
    for key, hashes in a.items():
        if hashes:
            assert not hashes & c[key], f"{key}: the same hashes under another secret"


def test_the_number_hash_is_not_a_plain_hash_of_the_number() -> None:
    """Without the secret, hashing a guessed number must not find it in the state."""
    import hashlib

    store = run_sample(SECRET)
    stored = set().union(*(s.numbers for s in store.periods.values()))
    numbers = {normalise(str(p["callee"])).digits for p in sample().cdrs}
    unkeyed = {int.from_bytes(hashlib.blake2b(n.encode()).digest()[:8], "big") >> 1 for n in numbers}
    unkeyed |= {int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big") >> 1 for n in numbers}
    assert not stored & unkeyed


# ----------------------------------------------------------------------------- settings, web


def test_repr_of_settings_never_shows_the_secret() -> None:
    settings = Settings(hash_secret=SecretStr(SECRET))
    for text in (repr(settings), str(settings), f"{settings}", repr(settings.hash_secret), str(settings.hash_secret)):
        assert SECRET not in text
    from_env = settings_from_env({"CDRWATCH_HASH_SECRET": SECRET})
    assert from_env.hash_secret.get_secret_value() == SECRET
    assert SECRET not in repr(from_env)


def test_web_views_bind_to_loopback_unless_configured() -> None:
    assert Settings().web_host == "127.0.0.1"
    assert settings_from_env({}).web_host == "127.0.0.1"
    assert settings_from_env({"CDRWATCH_WEB_HOST": "0.0.0.0"}).web_host == "0.0.0.0"


# ------------------------------------------------------------------------------------- logs


def small_stream() -> tuple[list[InputMessage], set[str]]:
    """A few normal users and every abuser (so alerts and re-bill lines are logged), in time order."""
    stream = build_sample(normal_users=3)
    msgs = [InputMessage("cdrs", str(p["user"]).encode(), orjson.dumps(p), float(i))
            for i, p in enumerate(stream.cdrs)]
    msgs += [InputMessage("sip-registrations", str(p["user"]).encode(), orjson.dumps(p), float(i) + 0.5)
             for i, p in enumerate(stream.registrations)]
    numbers = phone_forms([str(p["callee"]) for p in stream.cdrs] + [str(p["caller"]) for p in stream.cdrs])
    return msgs, numbers


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_text:
            lines.append(record.exc_text)
    return "\n".join(lines)


def leaks(text: str, numbers: set[str]) -> list[str]:
    return sorted(n for n in numbers if n in text)


@pytest.mark.integration
async def test_info_logs_of_a_replay_hold_no_phone_number_and_no_secret(
    broker: EmbeddedBroker, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    msgs, numbers = small_stream()
    secret_settings = settings.with_(hash_secret=SecretStr(SECRET))
    result = await replay(secret_settings, msgs, broker_url=broker.url, timeout_s=120)
    assert result.alerts and result.rebills  # there was something to log
    text = logged_text(caplog)
    assert "ALERT" in text
    assert SECRET not in text
    assert not leaks(text, numbers), leaks(text, numbers)[:10]


@pytest.mark.integration
async def test_info_logs_of_rejected_cdrs_hold_no_phone_number(
    broker: EmbeddedBroker, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A switch that writes numbers as JSON numbers, or pads them: the DLQ keeps the raw bytes (by
    design), but the INFO log line of the rejection must not carry the number."""
    caplog.set_level(logging.INFO)
    base = build_sample(normal_users=1).cdrs[-1]
    bad = [
        base | {"callee": 33612345678},
        base | {"caller": 33198765432},
        base | {"callee": "+33687654321" + " " * 130},
        base | {"callee": ["+33611223344"]},
    ]
    msgs = [InputMessage("cdrs", str(base["user"]).encode(), orjson.dumps(p), float(i)) for i, p in enumerate(bad)]
    numbers = {"33612345678", "33198765432", "33687654321", "33611223344"}
    result = await replay(settings, msgs, broker_url=broker.url, timeout_s=120)
    assert len(result.dlq) == len(bad)
    by_number: dict[str, list[str]] = defaultdict(list)
    for row in result.dlq:
        for n in numbers:
            if n in row["reason"]:
                by_number[n].append(row["reason"])
    text = logged_text(caplog)
    assert "DLQ" in text
    assert not leaks(text, numbers), f"logged at INFO: {leaks(text, numbers)}; DLQ reasons: {dict(by_number)}"
