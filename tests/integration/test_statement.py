"""`cdrwatch statement` on a replayed month (the embedded broker): the amounts equal the re-bill
lines to the cent, per user and for the customer, and the PDF holds them — read back from the PDF
with poppler's pdftotext, and page 1 rendered to PNG with pdftoppm (``make test`` installs
poppler-utils when it is missing)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from streams.cli import main
from streams.settings import load_plans_and_rates
from streams.core.errors import ConfigError
from streams.tools.embedded import EmbeddedBroker
from streams.tools.generator import generate_month
from streams.tools.replay import read_stream, replay
from streams.settings import Settings
from streams.tools.statement import build_statement, write_statement
from tests.peers import keep_screenshot
from tests.peers import tool as peers_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tool(name: str) -> str:
    return peers_tool(name, "poppler")


@pytest.fixture(scope="module")
def replayed(tansu: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Path:
    month = tmp_path_factory.mktemp("month")
    generate_month(month, users=40, month="2026-11", seed=7)
    messages = read_stream(month / "cdrs.jsonl", "cdrs", "start_time") + read_stream(
        month / "registrations.jsonl", "sip-registrations", "time")
    result = asyncio.run(replay(Settings(web_enabled=False), messages, broker_url=tansu.url, timeout_s=300))
    out = tmp_path_factory.mktemp("replay")
    result.write(out)
    return out


def lines_of(replayed: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in (replayed / "rebills.jsonl").read_bytes().splitlines() if line.strip()]


def test_the_statement_amounts_are_the_rebill_lines_to_the_cent(replayed: Path, tmp_path: Path) -> None:
    lines = lines_of(replayed)
    customer = Counter(str(line["customer"]) for line in lines).most_common(1)[0][0]
    mine = [line for line in lines if line["customer"] == customer]
    plans, _rates = load_plans_and_rates(Settings())
    statement = build_statement(replayed, customer, "2026-11", plans)
    assert statement.total == sum(Decimal(str(line["amount"])) for line in mine) > 0
    for user in statement.users:
        theirs = [line for line in mine if line["user"] == user.user]
        assert user.total == sum((Decimal(str(line["amount"])) for line in theirs), Decimal(0))
        assert sorted(str(line["line_id"]) for line in user.lines) == sorted(str(line["line_id"]) for line in theirs)
    html, pdf = write_statement(statement, tmp_path)
    text = html.read_text()
    assert all(str(line["call_id"]) in text for line in mine)
    # the PDF, read back: the customer's total and each user's
    words = subprocess.run([tool("pdftotext"), "-layout", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout
    assert "Fair-use statement" in words and customer in words
    assert f"re-billed in all {statement.total} EUR" in " ".join(words.split())
    for user in statement.users:
        if user.total:
            assert f"{user.user}: re-billed" in words and str(user.total) in words
    subprocess.run([tool("pdftoppm"), "-png", "-r", "70", "-f", "1", "-l", "2", str(pdf),
                    str(tmp_path / "statement-page")], check=True)
    pages = sorted(tmp_path.glob("statement-page*.png"))
    assert len(pages) == 2
    for png in pages:
        assert png.stat().st_size > 5000  # a page with text and tables, not a blank one
    keep_screenshot(pages[1])  # the first user's counters, breaches and re-billed calls


def test_the_statement_command_writes_both_files_and_refuses_what_it_cannot_do(
    replayed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    customer = str(lines_of(replayed)[0]["customer"])
    assert main(["statement", "--customer", customer, "--period", "2026-11", "--from", str(replayed),
                 "--out", str(tmp_path / "out")]) == 0
    assert {p.suffix for p in (tmp_path / "out").iterdir()} == {".html", ".pdf"}
    assert f"{customer} 2026-11:" in capsys.readouterr().out
    assert main(["statement", "--customer", "nobody", "--period", "2026-11", "--from", str(replayed),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "no user of customer 'nobody'" in capsys.readouterr().err
    assert main(["statement", "--customer", customer, "--period", "2026-11", "--from", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o3")]) == 2
    # lines and summary of different runs: refused, not a statement that disagrees with itself
    tampered = tmp_path / "tampered"
    shutil.copytree(replayed, tampered)
    kept = [line for line in lines_of(replayed) if line["customer"] == customer][1:]
    (tampered / "rebills.jsonl").write_bytes(b"\n".join(orjson.dumps(line) for line in kept) + b"\n")
    assert main(["statement", "--customer", customer, "--period", "2026-11", "--from", str(tampered),
                 "--out", str(tmp_path / "o4")]) == 2
    assert "are not from the same run" in capsys.readouterr().err


def test_without_pango_the_statement_says_what_to_install(replayed: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    import sys

    real_import = builtins.__import__

    def no_pango(name: str, *args: object, **kwargs: object) -> object:
        if name == "weasyprint":  # what importing it raises when Pango's libraries are missing
            raise OSError("cannot load library 'libpango-1.0-0'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.delitem(sys.modules, "weasyprint", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pango)
    customer = str(lines_of(replayed)[0]["customer"])
    statement = build_statement(replayed, customer, "2026-11", load_plans_and_rates(Settings())[0])
    with pytest.raises(ConfigError, match=r"needs Pango.*apt-get install libpango-1.0-0"):
        write_statement(statement, tmp_path)
