"""cdrwatch refuses to run on Faust or aiokafka releases its private-API module was never tested with."""

from __future__ import annotations

from importlib import metadata

import pytest

from streams.agents.batching import ALLOW_UNTESTED_ENV, TESTED_VERSIONS, check_versions


def test_the_installed_releases_are_the_tested_ones() -> None:
    for package, tested in TESTED_VERSIONS.items():
        assert metadata.version(package) in tested
    check_versions()


def test_an_untested_release_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    fake = {"faust-streaming": TESTED_VERSIONS["faust-streaming"][0], "aiokafka": "0.99.0"}
    with pytest.raises(ImportError, match=r"private API of aiokafka and was tested with 0\.14\.0, not 0\.99\.0"):
        check_versions(fake.__getitem__)


def test_an_untested_release_runs_when_allowed(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    check_versions({"faust-streaming": "0.16.0", "aiokafka": "0.14.0"}.__getitem__)
    assert "faust-streaming" in caplog.text
