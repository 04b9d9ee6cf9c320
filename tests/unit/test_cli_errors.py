"""Every command, given a bad flag, file or setting: one clear line, exit 2, no traceback, nothing
written — checked before any work, so that nothing is lost at the end of a long run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import orjson
import pytest

from streams.cli import main
from streams.tools.embedded import free_port
from streams.settings import bundled_file

SAMPLE = bundled_file("sample")
CDRS = str(SAMPLE / "cdrs.jsonl")
LABELS = str(SAMPLE / "expected.jsonl")

Case = Callable[[Path], list[str]]


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


def _asterisk_garbage(tmp: Path) -> str:
    path = tmp / "in" / "Master.csv"
    path.write_text('"not","a","cdr"\n"still","not","one"\n')
    return str(path)


CASES: dict[str, tuple[Case, str]] = {
    # name: (argv built in a scratch directory, words the error line must contain)
    "plans-is-a-directory": (lambda t: ["summary", "--cdrs", CDRS, "--plans", str(t / "in"), "--out", str(t / "o.parquet")],
                             "--plans"),
    "rates-is-a-directory": (lambda t: ["summary", "--cdrs", CDRS, "--rates", str(t / "in"), "--out", str(t / "o.parquet")],
                             "--rates"),
    "plans-missing": (lambda t: ["replay", "--cdrs", CDRS, "--plans", str(t / "nope.toml"), "--out", str(t / "o")],
                      "no such file"),
    "summary-out-is-a-directory": (lambda t: ["summary", "--cdrs", CDRS, "--out", str(t / "in")], "--out"),
    "summary-out-unknown-suffix": (lambda t: ["summary", "--cdrs", CDRS, "--out", str(t / "s.txt")], ".parquet or .csv"),
    "summary-out-parent-missing": (lambda t: ["summary", "--cdrs", CDRS, "--out", str(t / "no" / "s.csv")],
                                   "does not exist"),
    "cdrs-is-a-directory": (lambda t: ["summary", "--cdrs", str(t / "in"), "--out", str(t / "s.parquet")],
                            "is a directory"),
    "replay-cdrs-is-a-directory": (lambda t: ["replay", "--cdrs", str(t / "in"), "--out", str(t / "o")],
                                   "is a directory"),
    "registrations-missing": (lambda t: ["replay", "--cdrs", CDRS, "--registrations", str(t / "r.jsonl"),
                                         "--out", str(t / "o")], "--registrations"),
    "replay-out-is-a-file": (lambda t: ["replay", "--cdrs", CDRS, "--out", str(t / "in" / "file")], "is a file"),
    "replay-broker-nothing-listens": (lambda t: ["replay", "--cdrs", CDRS, "--out", str(t / "o"),
                                                 "--broker", f"kafka://127.0.0.1:{closed_port()}"], "no Kafka broker"),
    "replay-broker-http-url": (lambda t: ["replay", "--cdrs", CDRS, "--out", str(t / "o"),
                                          "--broker", "http://127.0.0.1:9092"], "kafka://host:port"),
    "replay-external-without-broker": (lambda t: ["replay", "--cdrs", CDRS, "--out", str(t / "o"),
                                                  "--external-workers"], "--broker"),
    "worker-broker-nothing-listens": (lambda t: ["worker", "--broker", f"kafka://127.0.0.1:{closed_port()}",
                                                 "--web-port", str(free_port())], "no Kafka broker"),
    "worker-broker-no-port": (lambda t: ["worker", "--broker", "kafka://127.0.0.1"], "kafka://host:port"),
    "evaluate-unknown-rule": (lambda t: ["evaluate", "--labels", LABELS, "--alerts", LABELS,
                                         "--rules", "distinct_number", "--strict"], "unknown rule 'distinct_number'"),
    "evaluate-labels-missing": (lambda t: ["evaluate", "--labels", str(t / "l.jsonl"), "--alerts", LABELS],
                                "no such file"),
    "import-every-row-rejected": (lambda t: ["import", "asterisk", _asterisk_garbage(t), "--out", str(t / "c.jsonl"),
                                             "--rejects", str(t / "in" / "rejects.jsonl")], "nothing converted"),
    "import-file-is-a-directory": (lambda t: ["import", "asterisk", str(t / "in"), "--out", str(t / "c.jsonl")],
                                   "is a directory"),
    "import-out-is-a-directory": (lambda t: ["import", "asterisk", _asterisk_garbage(t), "--out", str(t / "in")],
                                  "is a directory"),
    "generate-out-is-a-file": (lambda t: ["generate", "--users", "3", "--month", "2026-11",
                                          "--out", str(t / "in" / "file")], "is a file"),
    "generate-bad-month": (lambda t: ["generate", "--users", "3", "--month", "2026-13", "--out", str(t / "g")],
                           "--month"),
    "bench-out-is-a-directory": (lambda t: ["bench", "--out", str(t / "in")], "is a directory"),
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def _scratch(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "file").write_text("x\n")
    return tmp_path


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_argument_is_one_clear_line_and_exit_2(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    build, needle = CASES[name]
    scratch = _scratch(tmp_path)
    argv = build(scratch)
    before = _tree(scratch)
    started = time.monotonic()
    rc = main(argv)
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback, no log noise
    assert lines[0].startswith(f"cdrwatch {argv[0]}: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert took < 10.0, f"{name} took {took:.1f} s to fail"
    after = _tree(scratch)
    if name == "import-every-row-rejected":  # the rejects file says why; the output is not written
        assert not (scratch / "c.jsonl").exists()
        assert orjson.loads((scratch / "in" / "rejects.jsonl").read_bytes().splitlines()[0])["reason"]
        after.pop("in/rejects.jsonl")
    assert after == before  # nothing written


def test_import_fails_past_max_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = str(Path(__file__).parent.parent / "data" / "import" / "asterisk-master-16.csv")
    out = tmp_path / "cdrs.jsonl"
    assert main(["import", "asterisk", source, "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    rejected = sum(1 for _ in (tmp_path / "cdrs.rejects.jsonl").open())
    assert rejected > 0
    assert "e.g. " in summary and "'2026-11-31 13:00:00'" in summary  # the offending values are shown
    out.unlink()
    assert main(["import", "asterisk", source, "--out", str(out), "--max-rejects", str(rejected - 1)]) == 2
    assert f"{rejected} rows rejected, more than --max-rejects {rejected - 1}" in capsys.readouterr().err
    assert not out.exists()
    assert main(["import", "asterisk", source, "--out", str(out), "--max-rejects", str(rejected)]) == 0
    assert out.exists()


@pytest.mark.parametrize("command", ["worker", "run"])
def test_a_web_port_in_use_is_refused_before_start(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([command, "--web-port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cdrwatch {command}: error: web port 127.0.0.1:{port} is already in use (another worker?): "
                   "choose another with --web-port or CDRWATCH_WEB_PORT")


def test_an_unknown_flag_shows_its_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["replay", "--cdrs", CDRS, "--out", "x", "--bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cdrwatch replay ") and "cdrwatch replay: error: unrecognized arguments: --bogus" in err


def test_a_bad_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CDRWATCH_WEB_PORT", "sixty")
    assert main(["worker"]) == 2
    assert capsys.readouterr().err.strip() == "cdrwatch worker: error: CDRWATCH_WEB_PORT: expected an integer, got 'sixty'"


def test_help_lists_the_environment_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = capsys.readouterr().out
    assert "CDRWATCH_WEB_PORT" in text and "[default: 6066]" in text and "web_port" not in text
    assert "fraud-alerts" in text and "account-actions" in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "%%" not in capsys.readouterr().out


def test_the_command_exits_2_without_a_traceback_as_a_process(tmp_path: Path) -> None:
    """The same through the installed command: what a script sees."""
    cdrwatch = shutil.which("cdrwatch", path=str(Path(sys.executable).parent))
    assert cdrwatch is not None
    proc = subprocess.run([cdrwatch, "summary", "--cdrs", CDRS, "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"cdrwatch summary: error: --out {tmp_path}: expected a file name ending in .parquet or .csv"]


def test_a_command_s_help_loads_only_what_that_command_needs() -> None:
    """`cdrwatch evaluate --help` imports neither Faust, aiokafka nor pyarrow (only the module of
    the command being run is imported)."""
    import subprocess
    import sys

    code = ("import sys\nfrom streams.cli import main\ntry:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('faust', 'aiokafka', 'pyarrow', 'weasyprint') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip().splitlines()[-1] == "[]"
