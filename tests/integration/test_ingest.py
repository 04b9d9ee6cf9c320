"""`cdrwatch ingest` against the embedded broker: FreeSWITCH's mod_json_cdr posts in each of its
encodings, cdrwatch's own payloads in bulk, bad bodies (DLQ, and an answer that says why), a wrong
token, an oversized post, and a broker that stops answering (503 with Retry-After, nothing
acknowledged before the broker holds it)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.codecs import decode_cdr
from streams.topics import DLQ_REASON_HEADER
from streams.tools.embedded import EmbeddedBroker, free_port
from streams.tools.importers import ImportOptions, convert_freeswitch
from streams.ingest import Ingest, IngestConfig, producer_for
from streams.settings import Settings
from tests.peers import run_settings, topic_records

pytestmark = [pytest.mark.integration]

FREESWITCH_CDR = next((Path(__file__).resolve().parents[1] / "data" / "import" / "freeswitch").glob("*.json"))
TOKEN = "s3cret-ingest-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Started = Callable[..., "asyncio.Future[tuple[TestClient, Settings]]"]


async def start(broker: EmbeddedBroker, **config: Any) -> tuple[TestClient, Settings, Any]:
    settings = await run_settings(broker.url, "ingest", partitions=2)
    producer = producer_for(settings)
    await producer.start()
    ingest = Ingest(IngestConfig(settings=settings, token=TOKEN, **config), producer, lambda plan: plan == "minute")
    client = TestClient(TestServer(ingest.app()))
    await client.start_server()
    return client, settings, producer


@pytest.fixture()
async def ingest(tansu: EmbeddedBroker) -> AsyncIterator[tuple[TestClient, Settings]]:
    client, settings, producer = await start(tansu)
    yield client, settings
    await client.close()
    await producer.stop()


async def records(settings: Settings, topic: str) -> list[Any]:
    return await topic_records(settings, topic)


def cdr(call_id: str, user: str = "1001", **changes: Any) -> dict[str, Any]:
    return {"event": "end", "call_id": call_id, "user": user, "customer": "acme", "caller": user,
            "callee": "0612345678", "direction": "outbound", "start_time": "2026-11-05T09:15:02+01:00",
            "answer_time": "2026-11-05T09:15:09+01:00", "end_time": "2026-11-05T09:17:31+01:00", "billsec": 142,
            "disposition": "ANSWERED"} | changes


# --------------------------------------------------------------------------------- FreeSWITCH


@pytest.mark.parametrize("encoding", ["true", "base64", "false"])
async def test_a_mod_json_cdr_post_in_each_encoding_reaches_cdrs_keyed_by_user(
    ingest: tuple[TestClient, Settings], encoding: str,
) -> None:
    client, settings = ingest
    text = FREESWITCH_CDR.read_text()
    if encoding == "true":  # mod_json_cdr's default: cdr=<url-encoded JSON>, as a form
        body, headers = f"cdr={quote(text)}", {"Content-Type": "application/x-www-form-urlencoded"}
    elif encoding == "base64":
        body, headers = f"cdr={quote(base64.b64encode(text.encode()).decode())}", {
            "Content-Type": "application/x-www-form-urlencoded"}
    else:
        body, headers = text, {"Content-Type": "application/json"}
    answer = await client.post("/freeswitch/cdr", data=body, headers=headers | AUTH)
    assert answer.status == 200, await answer.text()
    assert await answer.json() == {"accepted": 1, "rejected": []}
    [record] = await records(settings, "cdrs")
    expected = convert_freeswitch(orjson.loads(text), ImportOptions(), "")
    assert orjson.loads(record.value) == expected
    assert record.key == expected["user"].encode() == b"acme"  # the accountcode
    decode_cdr(record.value)


async def test_a_post_that_is_not_a_cdr_goes_to_the_dlq_and_the_answer_says_why(
    ingest: tuple[TestClient, Settings],
) -> None:
    client, settings = ingest
    not_json = await client.post("/freeswitch/cdr", data=b"cdr=%7Bnot json", headers=AUTH | {
        "Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status == 400
    assert "not valid UTF-8 JSON" in (await not_json.json())["error"]
    no_variables = await client.post("/freeswitch/cdr", data=b'{"channel_data": {}}', headers=AUTH)
    assert no_variables.status == 422
    answer = await no_variables.json()
    assert answer["error"] == "no variables object (not a mod_json_cdr record)"
    assert answer["dlq"] == settings.topic("cdrs-dlq")
    dead = {dict(r.headers)[DLQ_REASON_HEADER].decode().split(" (")[0]: r for r in await records(settings, "cdrs-dlq")}
    assert sorted(dead) == ["no variables object", "not valid UTF-8 JSON"]
    assert dead["no variables object"].value == b'{"channel_data": {}}'  # the post as it came
    assert dead["not valid UTF-8 JSON"].value == b"cdr=%7Bnot json"
    assert {dict(r.headers)["cdrwatch-source"] for r in dead.values()} == {b"ingest/freeswitch/cdr"}
    assert await records(settings, "cdrs") == []


# ------------------------------------------------------------------------------ own payloads


async def test_jsonl_in_bulk_good_lines_to_the_topic_bad_ones_to_the_dlq(ingest: tuple[TestClient, Settings]) -> None:
    client, settings = ingest
    lines = [cdr("c1"), cdr("c2", user="1002"), cdr("c3", billsec=-1), cdr("c4", user="1003")]
    body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n{broken\n"
    answer = await client.post("/cdrs", data=body, headers=AUTH)
    assert answer.status == 200
    got = await answer.json()
    assert got["accepted"] == 3 and [r["line"] for r in got["rejected"]] == [3, 5]
    assert "billsec" in got["rejected"][0]["reason"] and "JSON" in got["rejected"][1]["reason"]
    produced = await records(settings, "cdrs")
    assert sorted((r.key, orjson.loads(r.value)["call_id"]) for r in produced) == [
        (b"1001", "c1"), (b"1002", "c2"), (b"1003", "c4")]
    assert len(await records(settings, "cdrs-dlq")) == 2
    # every line bad: 422
    refused = await client.post("/sip-registrations", data=b'{"user": "1001"}', headers=AUTH)
    assert refused.status == 422 and (await refused.json())["accepted"] == 0
    subscriber = await client.post("/subscribers", data=b'{"user": "1001", "customer": "acme", "plan": "minute"}', headers=AUTH)
    assert subscriber.status == 200, await subscriber.text()
    assert [r.key for r in await records(settings, "subscribers")] == [b"1001"]


async def test_kamailio_events_become_payloads_and_bad_ones_go_to_the_dlq_they_were_meant_for(
    ingest: tuple[TestClient, Settings],
) -> None:
    client, settings = ingest
    register = {"type": "register", "user": "alice", "contact": "sip:alice@10.1.1.11:5060",
                "instance_id": "<urn:uuid:4f0c6a52-0001-4e0f-9c1b-000000000001>", "user_agent": "Yealink SIP-T46U",
                "source_ip": "203.0.113.7", "expires": 3600, "time": "1796194958.048650"}
    answer = await client.post("/kamailio/event", data=orjson.dumps(register), headers=AUTH)
    assert answer.status == 200, await answer.text()
    [registration] = await records(settings, "sip-registrations")
    assert registration.key == b"alice"
    assert orjson.loads(registration.value) == {k: v for k, v in register.items() if k != "type"} | {
        "customer": "alice", "time": "2026-12-02T08:02:38.048+01:00"}
    bad = [register | {"expires": "soon"}, register | {"time": "nan"},
           {"type": "dialog_end", "call_id": "c1", "caller": "carol", "callee": "0612345678",
            "invite_time": "1796194958.1", "answer_time": "", "time": "1796194962.1"},
           {"type": "hangup"}]
    answer = await client.post("/kamailio/event", data=b"\n".join(orjson.dumps(e) for e in bad), headers=AUTH)
    assert answer.status == 422
    reasons = [r["reason"] for r in (await answer.json())["rejected"]]
    assert reasons == ["expires: not an integer: 'soon'", "time: expected epoch seconds ($TV(Sn)), got 'nan'",
                       "answer_time: expected epoch seconds ($TV(Sn)), got ''",
                       "type: expected one of register, dialog_start, dialog_end, dialog_failed, got 'hangup'"]
    assert len(await records(settings, "sip-registrations-dlq")) == 2
    assert len(await records(settings, "cdrs-dlq")) == 2


# ----------------------------------------------------------------------------------- access


async def test_a_post_without_the_token_is_refused_and_nothing_is_produced(ingest: tuple[TestClient, Settings]) -> None:
    client, settings = ingest
    body = orjson.dumps(cdr("c1"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Token {TOKEN}"},
                    {"Authorization": "Basic " + base64.b64encode(b"fs:wrong").decode()}):
        answer = await client.post("/cdrs", data=body, headers=headers)
        assert answer.status == 401, headers
        assert "Authorization: Bearer" in (await answer.json())["error"]
    # mod_json_cdr's `cred` param: basic auth, the token as the password
    basic = {"Authorization": "Basic " + base64.b64encode(f"freeswitch:{TOKEN}".encode()).decode()}
    assert (await client.post("/cdrs", data=body, headers=basic)).status == 200
    assert len(await records(settings, "cdrs")) == 1
    health = await client.get("/healthz")  # no personal data: no token
    assert health.status == 200 and (await health.json())["status"] == "ok"
    metrics = await (await client.get("/metrics")).text()
    assert 'cdrwatch_ingest_requests_total{endpoint="/cdrs",status="401"} 4.0' in metrics
    assert 'cdrwatch_ingest_records_total{outcome="ok",topic="cdrs"} 1.0' in metrics


async def test_an_oversized_post_gets_413(tansu: EmbeddedBroker) -> None:
    client, settings, producer = await start(tansu, max_body=1024)
    try:
        big = b"\n".join(orjson.dumps(cdr(f"c{n}")) for n in range(20))
        answer = await client.post("/cdrs", data=big, headers=AUTH)
        assert answer.status == 413
        assert "--max-body" in (await answer.json())["error"]
        assert await records(settings, "cdrs") == []
    finally:
        await client.close()
        await producer.stop()


# ------------------------------------------------------------------------------ backpressure


async def test_a_broker_that_stops_answering_gets_503_and_nothing_is_acknowledged_before_it_holds_it() -> None:
    """The broker process is stopped (SIGSTOP): the first post waits for it; beyond --max-pending
    the next ones get 503 with Retry-After at once; once the broker runs again the waiting post
    is answered 200, and its record is there."""
    with EmbeddedBroker() as broker:
        client, settings, producer = await start(broker, max_pending=1, send_timeout_s=30.0)
        try:
            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                first = asyncio.ensure_future(client.post("/cdrs", data=orjson.dumps(cdr("c1")), headers=AUTH))
                await asyncio.sleep(1.0)
                assert not first.done(), "answered before the broker held the record"
                second = await client.post("/cdrs", data=orjson.dumps(cdr("c2")), headers=AUTH)
                assert second.status == 503 and second.headers["Retry-After"] == "1"
                assert "--max-pending" in (await second.json())["error"]
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            answer = await asyncio.wait_for(first, 30)
            assert answer.status == 200, await answer.text()
            assert [orjson.loads(r.value)["call_id"] for r in await records(settings, "cdrs")] == ["c1"]
        finally:
            await client.close()
            await producer.stop()


async def test_a_send_timeout_gets_503() -> None:
    with EmbeddedBroker() as broker:
        client, _settings, producer = await start(broker, send_timeout_s=1.0)
        try:
            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                answer = await client.post("/cdrs", data=orjson.dumps(cdr("c1")), headers=AUTH)
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            assert answer.status == 503 and answer.headers["Retry-After"] == "1"
            assert "did not take the records in time" in (await answer.json())["error"]
        finally:
            await client.close()
            await producer.stop()


# --------------------------------------------------------------------------------------- CLI


def test_ingest_beyond_loopback_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CDRWATCH_INGEST_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "streams.cli", "ingest", "--host", "0.0.0.0", "--port",
                           str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cdrwatch ingest: error: --host 0.0.0.0 is reachable beyond this machine: set CDRWATCH_INGEST_TOKEN "
        "(the posts carry personal data), or listen on 127.0.0.1"]
