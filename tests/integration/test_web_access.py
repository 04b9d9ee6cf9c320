"""Who can reach a worker's web port: exactly the address it was told to bind, and, beyond
loopback, the views with personal data only with the bearer token."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from streams.tools.embedded import free_port
from tests.brokers import Broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "s3cret-token-for-the-test"


def machine_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback."""
    found: set[str] = set()
    try:
        text = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True,
                              timeout=10).stdout
        found.update(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", text))
    except (OSError, subprocess.SubprocessError):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:  # the address of the default route's interface; a UDP connect sends nothing
            probe.connect(("192.0.2.254", 9))
            found.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(a for a in found if not a.startswith("127."))


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture()
def start_worker(tansu: Broker, tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(host: str, token: str | None = None) -> int:
        port = free_port()
        tag = uuid.uuid4().hex[:8]
        env = dict(os.environ, CDRWATCH_BROKER=tansu.url, CDRWATCH_APP_ID=f"web-{tag}",
                   CDRWATCH_TOPIC_PREFIX=f"web-{tag}-", CDRWATCH_DATA_DIR=str(tmp_path / tag))
        env.pop("CDRWATCH_WEB_TOKEN", None)
        if token:
            env["CDRWATCH_WEB_TOKEN"] = token
        log = (tmp_path / f"{tag}.log").open("wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-host", host,
                                       "--web-port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert procs[-1].poll() is None, (tmp_path / f"{tag}.log").read_text()
            try:
                if get(f"http://{host}:{port}/healthz")[0] == 200:
                    return port
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"worker on {host}:{port} never answered: {(tmp_path / f'{tag}.log').read_text()}")

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_worker_binds_loopback_only(start_worker: object) -> None:
    others = machine_addresses()
    assert others, "this machine has no non-loopback address to test the bind against"
    port = start_worker("127.0.0.1")  # type: ignore[operator]
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert get(f"http://127.0.0.1:{port}/alerts")[0] == 200  # loopback: no token needed
    # a wildcard bind would answer on every other address of the machine, loopback's 127.0.0.2 included
    for address in others + ["127.0.0.2"]:
        assert refused(address, port), f"the worker bound to 127.0.0.1 answered on {address}:{port}"


def test_beyond_loopback_the_personal_views_need_the_token(start_worker: object) -> None:
    address = machine_addresses()[0]
    port = start_worker(address, TOKEN)  # type: ignore[operator]
    base = f"http://{address}:{port}"
    assert refused("127.0.0.1", port)  # bound to that address only
    assert get(f"{base}/healthz")[0] == 200
    status, body = get(f"{base}/metrics")
    assert status == 200 and b"cdrwatch_events_total" in body
    for path in ("/alerts", "/users/alice/usage"):
        assert get(base + path)[0] == 401
        assert get(base + path, "wrong-token")[0] == 401
    status, body = get(f"{base}/alerts", TOKEN)
    assert status == 200 and b'"alerts":[]' in body
    deadline = time.monotonic() + 60
    while (status := get(f"{base}/users/alice/usage", TOKEN)[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.5)  # the worker is still joining its group and recovering its tables
    assert status == 404  # authorised; no such user yet


def test_beyond_loopback_without_a_token_the_personal_views_are_refused(start_worker: object) -> None:
    address = machine_addresses()[0]
    port = start_worker(address)  # type: ignore[operator]
    base = f"http://{address}:{port}"
    assert get(f"{base}/healthz")[0] == 200
    status, body = get(f"{base}/alerts")
    assert status == 403 and b"CDRWATCH_WEB_TOKEN" in body
    assert get(f"{base}/users/alice/usage")[0] == 403
