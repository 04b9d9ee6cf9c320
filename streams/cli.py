"""The ``cdrwatch`` command. ``format_*`` functions return text; commands print it."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Sequence

from typing import TYPE_CHECKING

from . import __version__
from .checks import output_dir, output_file, period, positive_float, positive_int
from .core.errors import ConfigError
from .settings import PROCESSING_GUARANTEES, Settings, bundled_file, env_help, settings_from_env

if TYPE_CHECKING:
    from .core.summary import SummaryRow
    from .tools.inputs import InputStream
    from .tools.replay import ReplayResult

EXIT_USAGE = 2

# Commands that live in their own module, with the line `cdrwatch --help` shows for them: each
# module has `register(subparsers)`, which adds its parser and sets `func` (a function of the parsed
# args returning the exit code). Only the module of the command being run is imported, so that a
# command starts without loading what the others need (Faust, aiokafka, pyarrow, WeasyPrint).
PLUGIN_COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("streams.tools.bench", "throughput: pipeline vs naive Faust vs raw consumer; alert latency; state size"),
    "generate": ("streams.tools.generator", "write a synthetic, labelled month of CDRs and registrations"),
    "evaluate": ("streams.tools.evaluate", "score fair-use and fraud alerts, and account actions, against labels"),
    "import": ("streams.tools.importers", "convert Asterisk, FreeSWITCH or Kamailio CDRs to the cdrs payload (JSONL)"),
    "ingest": ("streams.ingest", "HTTP service: switches post CDRs and events, produced to the input topics"),
    "statement": ("streams.tools.statement", "a customer's monthly fair-use statement, HTML and PDF"),
    "console": ("streams.console", "web console for fraud analysts: live alerts, per-user pages, verdicts"),
}

ENV_HELP = env_help()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plans", type=Path, metavar="FILE", help="plans.toml (default: the bundled sample)")
    parser.add_argument("--rates", type=Path, metavar="FILE", help="rates.csv rate deck (default: the bundled sample)")
    parser.add_argument("--partitions", type=positive_int, metavar="N", help="partitions per topic (default 4)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: warning")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command`` (the one being run), only that plugin command's module is
    imported, the others are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="cdrwatch",
        description="Fair-use alerts and per-minute re-billing from streams of CDRs and SIP registrations.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cdrwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker", help="run a Faust worker (production: --broker kafka://…)",
        description="Run one cdrwatch worker: consumes cdrs, sip-registrations and subscribers, writes "
        "fairuse-alerts and rebilled-calls, and (with a [fraud] section in the plans) fraud-alerts and "
        "account-actions; rejected input goes to <topic>-dlq. Serves /metrics, /healthz and the views on "
        "--web-host:--web-port (loopback unless told; views with personal data need CDRWATCH_WEB_TOKEN beyond "
        "loopback). Start more workers with the same settings to scale out.",
        epilog=ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--broker", metavar="URL", help="kafka://host:port[;kafka://host2:port] (default kafka://127.0.0.1:9092)")
    worker.add_argument("--store", metavar="URL", help="table store: memory:// (default) or rocksdb:///path")
    worker.add_argument("--web-host", metavar="HOST", help="bind address of /metrics and the views (default 127.0.0.1)")
    worker.add_argument("--web-port", type=positive_int, metavar="N", help="default 6066")
    worker.add_argument("--standby-replicas", type=int, metavar="N", help="standby copies of each table partition (default 0)")
    worker.add_argument("--processing-guarantee", choices=PROCESSING_GUARANTEES,
                        help="at_least_once (default): after a failure some outputs come again, same ids; "
                        "exactly_once: outputs, state and input offsets commit together in Kafka transactions "
                        "(Apache Kafka only; consumers read with isolation.level=read_committed)")
    _common(worker)

    run = sub.add_parser(
        "run", help="embedded broker + worker + the bundled sample stream (what `make run` does)",
        description="Start the embedded broker and a worker, replay the bundled sample stream, print alerts "
        "as they happen and serve /metrics, until Ctrl-C.",
    )
    run.add_argument("--web-port", type=positive_int, metavar="N", help="default 6066")
    run.add_argument("--exit-when-done", action="store_true", help="stop once the sample is processed")
    _common(run)

    rp = sub.add_parser(
        "replay", help="run JSONL/Parquet streams through a broker and a worker; write the outputs",
        description="Replay recorded streams through a real broker (embedded unless --broker) and a real "
        "worker, wait until everything is processed, write DIR/alerts.jsonl, DIR/rebills.jsonl, "
        "DIR/fraud-alerts.jsonl, DIR/account-actions.jsonl, DIR/dlq.jsonl (rejected input with its reason, "
        "file and line) and DIR/summary.parquet, then exit 0.",
    )
    rp.add_argument("--cdrs", type=Path, required=True, metavar="FILE", help="cdrs stream (.jsonl or .parquet)")
    rp.add_argument("--registrations", type=Path, metavar="FILE", help="sip-registrations stream")
    rp.add_argument("--subscribers", type=Path, metavar="FILE", help="subscribers records ({user, customer, plan})")
    rp.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory (created)")
    rp.add_argument("--broker", metavar="URL", help="an existing Kafka (topics are prefixed per run unless --external-workers)")
    rp.add_argument("--external-workers", action="store_true",
                    help="only produce into --broker's topics and collect what the running workers emit: waits until "
                    "their consumer group (CDRWATCH_APP_ID) has no lag and the outputs are quiet")
    rp.add_argument("--timeout", type=positive_int, default=600, metavar="S", help="give up after S seconds (600)")
    rp.add_argument("--speed", type=positive_float, metavar="X",
                    help="play event time X times faster than real time (60: one hour per minute; default: as fast "
                    "as possible); the timeout then counts from the last message sent")
    _common(rp)

    sm = sub.add_parser(
        "summary", help="the monthly fair-use summary (Parquet or CSV) from recorded streams",
        description="Compute the monthly summary — one row per (customer, user, period): plan, distinct "
        "numbers, peak simultaneous calls, peak registered devices, rules breached, covered calls and "
        "minutes, re-billed amount — by running the streams through the same rules engine as the worker, "
        "without Kafka. `replay` writes the same file (DIR/summary.parquet) from the worker's tables.",
    )
    sm.add_argument("--cdrs", type=Path, required=True, metavar="FILE", help="cdrs stream (.jsonl or .parquet)")
    sm.add_argument("--registrations", type=Path, metavar="FILE", help="sip-registrations stream")
    sm.add_argument("--subscribers", type=Path, metavar="FILE", help="subscribers records ({user, customer, plan})")
    sm.add_argument("--period", metavar="YYYY-MM", type=period, help="only this month")
    sm.add_argument("--out", type=Path, required=True, metavar="FILE",
                    help="summary file: .parquet, or .csv for CSV")
    _common(sm)

    br = sub.add_parser(
        "broker", help="run the embedded broker in the foreground",
        description="Run the embedded Tansu broker on loopback, create cdrwatch's topics and print the "
        "bootstrap address (host:port) on the first line. Ctrl-C stops it.",
    )
    br.add_argument("--port", type=positive_int, metavar="N", help="default: a free port")
    br.add_argument("--partitions", type=positive_int, default=4, metavar="N")
    for name, (module, help) in PLUGIN_COMMANDS.items():
        if command is None or command == name:
            importlib.import_module(module).register(_Listed(sub, help))
        else:
            sub.add_parser(name, help=help)
    return parser


class _Listed:
    """The subparsers as a plugin's ``register`` sees them: its parser is listed with its help line."""

    def __init__(self, sub: Any, help: str) -> None:
        self.sub, self.help = sub, help

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.sub.add_parser(name, help=self.help, **kwargs)
        return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    try:
        return _settings_from_args(args)
    except ValueError as exc:  # a bad CDRWATCH_* variable or an inconsistent combination
        raise ConfigError(str(exc)) from None


def _settings_from_args(args: argparse.Namespace) -> Settings:
    return settings_from_env(
        broker=getattr(args, "broker", None),
        store=getattr(args, "store", None),
        plans_path=getattr(args, "plans", None),
        rates_path=getattr(args, "rates", None),
        partitions=getattr(args, "partitions", None),
        web_host=getattr(args, "web_host", None),
        web_port=getattr(args, "web_port", None),
        standby_replicas=getattr(args, "standby_replicas", None),
        processing_guarantee=getattr(args, "processing_guarantee", None),
        log_level=getattr(args, "log_level", None),
    )


def format_replay(result: ReplayResult, out_dir: Path) -> str:
    by_rule: dict[str, int] = {}
    for alert in result.alerts:
        by_rule[alert["rule"]] = by_rule.get(alert["rule"], 0) + 1
    total = sum((Decimal(str(r["amount"])) for r in result.rebills), start=Decimal(0))
    outcomes = ", ".join(f"{t} {o}: {n}" for (t, o), n in sorted(result.counts.items()))
    lines = [
        f"replayed {result.sent} messages in {result.seconds:.1f} s ({outcomes})",
        f"alerts: {len(result.alerts)}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items())) + ")" if by_rule else ""),
        f"re-bill lines: {len(result.rebills)}, {total} EUR",
        f"fraud alerts: {len(result.fraud_alerts)}, account actions: {len(result.actions)}",
        f"rejected to DLQ: {len(result.dlq)}",
        "wrote alerts.jsonl, rebills.jsonl, dlq.jsonl"
        + (f" and summary.parquet ({len(result.summary)} rows)" if result.summary is not None else "")
        + f" in {out_dir}",
    ]
    return "\n".join(lines)


def format_alert(payload: dict[str, Any]) -> str:
    return (
        f"ALERT {payload['rule']:<19} user={payload['user']} customer={payload['customer']} "
        f"period={payload['period']} observed={payload['observed']} limit={payload['limit']} "
        f"x{payload['multiplier']} at {payload['time']}"
    )


def read_inputs(args: argparse.Namespace) -> InputStream:
    """The input files as one stream in event-time order, read as it is consumed. At equal event
    times subscriber records come first, then CDRs, then registrations (files sorted on disk when
    out of order; a malformed file is an error here, before anything is processed)."""
    from .tools.inputs import InputFile, InputStream

    files = [InputFile(args.subscribers, "subscribers", "")] if args.subscribers else []
    files.append(InputFile(args.cdrs, "cdrs", "start_time"))
    if args.registrations:
        files.append(InputFile(args.registrations, "sip-registrations", "time"))
    return InputStream(files)


def format_summary(rows: Sequence[SummaryRow], counts: dict[tuple[str, str], int]) -> str:
    breached = [r for r in rows if r.rules_breached]
    total = sum((r.rebilled_amount for r in rows), start=Decimal(0))
    lines = [
        f"{len(rows)} user-months, {len(breached)} in breach, re-billed {total} EUR",
        "  ".join(f"{t} {o}: {n}" for (t, o), n in sorted(counts.items())),
    ]
    if breached:
        lines.append(f"{'customer':<12} {'user':<20} {'period':<7} {'rules':<40} {'amount':>10}")
        for r in breached:
            lines.append(
                f"{r.customer:<12} {r.user:<20} {r.period:<7} {','.join(r.rules_breached):<40} {r.rebilled_amount:>10}"
            )
    return "\n".join(lines)


def format_fraud(payload: dict[str, Any]) -> str:
    if "action_id" in payload:
        return f"ACTION {payload['action']:<19} user={payload['user']} customer={payload['customer']}: {payload['reason']}"
    return (
        f"FRAUD {payload['level']:<8} {payload['rule']:<21} user={payload['user']} observed={payload['observed']} "
        f"threshold={payload['threshold']} at {payload['time']}"
    )


SUMMARY_SUFFIXES = (".parquet", ".csv")


def cmd_summary(args: argparse.Namespace) -> int:
    from .settings import load_plans_and_rates
    from .core.summary import summary_rows
    from .tools.replay import final_figures, run_offline, stderr_report
    from .tools.reports import write_summary

    output_file(args.out, "--out", SUMMARY_SUFFIXES)
    settings = settings_from_args(args)
    plans, rates = load_plans_and_rates(settings)
    started = time.monotonic()
    with read_inputs(args) as inputs:
        store, counts = run_offline(settings, inputs, stderr_report)
    stderr_report(final_figures(len(inputs), time.monotonic() - started))
    states = [(u, p, s) for (u, p), s in store.periods.items() if args.period in (None, p)]
    rows = summary_rows(states, plans, rates)
    write_summary(rows, args.out, plans.timezone.key)
    print(format_summary(rows, counts))
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .settings import load_plans_and_rates
    from .connect import check_broker
    from .tools.replay import final_figures, replay, replay_external, stderr_report

    output_dir(args.out, "--out")
    if args.external_workers and not args.broker:
        raise ConfigError("--external-workers needs --broker (the deployment's Kafka)")
    settings = settings_from_args(args)
    load_plans_and_rates(settings)
    started = time.monotonic()
    with read_inputs(args) as messages:
        if args.broker:
            asyncio.run(check_broker(settings))
        if args.external_workers:
            result = asyncio.run(replay_external(settings, messages, timeout_s=args.timeout, report=stderr_report,
                                                 speed=args.speed))
        else:
            result = asyncio.run(replay(settings, messages, broker_url=args.broker, timeout_s=args.timeout,
                                        report=stderr_report, speed=args.speed))
    result.write(args.out)
    print(format_replay(result, args.out))
    stderr_report(final_figures(result.sent, time.monotonic() - started))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .connect import check_port_free
    from .tools.inputs import InputFile, InputStream

    settings = settings_from_args(args)
    check_port_free(settings.web_host, settings.web_port)
    sample = bundled_file("sample")
    with InputStream([InputFile(sample / "cdrs.jsonl", "cdrs", "start_time"),
                      InputFile(sample / "registrations.jsonl", "sip-registrations", "time")]) as messages:
        return asyncio.run(_run(settings, messages, args.exit_when_done))


async def _run(settings: Settings, messages: InputStream, exit_when_done: bool) -> int:
    from .agents.pipeline import build_pipeline
    from .topics import ALL_TOPICS
    from .settings import load_plans_and_rates
    from .tools.embedded import EmbeddedBroker, create_topics
    from .tools.replay import _wait_processed, produce, stderr_report

    plans, rates = load_plans_and_rates(settings)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="cdrwatch-run-") as scratch:
        settings = settings.with_(broker=broker.url, data_dir=Path(scratch))
        print(f"embedded broker on {broker.bootstrap}", flush=True)
        await create_topics(broker.bootstrap, ALL_TOPICS, settings.partitions)
        pipeline = build_pipeline(settings, plans, rates)
        pipeline.on_output.append(
            lambda topic, p: print(format_alert(p), flush=True) if topic == "fairuse-alerts"
            else print(format_fraud(p), flush=True) if topic in ("fraud-alerts", "account-actions") else None
        )
        pipeline.app.finalize()
        await pipeline.app.start()
        from .web import (
            format_endpoints,  # /metrics, /healthz, /users/{user}/usage, /alerts
        )

        print(format_endpoints(settings.web_host, settings.web_port), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            print(f"replaying the bundled sample: {len(messages)} messages", flush=True)
            total = await produce(settings, messages)
            await _wait_processed(pipeline, total, 600, stderr_report)
            counts = ", ".join(f"{t} {o}: {n}" for (t, o), n in sorted(pipeline.metrics.counts.items()))
            if exit_when_done:
                print(f"sample processed ({counts})", flush=True)
            else:
                print(f"sample processed ({counts}); Ctrl-C to stop", flush=True)
                await stop.wait()
        finally:
            await pipeline.app.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from .agents.pipeline import build_pipeline
    from .settings import load_plans_and_rates
    from .connect import check_broker, check_port_free, check_transactions
    from .web import format_endpoints

    settings = settings_from_args(args)
    plans, rates = load_plans_and_rates(settings)
    if settings.web_enabled:
        check_port_free(settings.web_host, settings.web_port)
    asyncio.run(check_broker(settings))
    if settings.processing_guarantee == "exactly_once":
        asyncio.run(check_transactions(settings))
    pipeline = build_pipeline(settings, plans, rates)
    print(f"cdrwatch worker {settings.app_id} on {settings.broker}", flush=True)
    if settings.web_enabled:
        print(format_endpoints(settings.web_host, settings.web_port), flush=True)
    worker = faust.Worker(pipeline.app, loglevel=settings.log_level.upper())
    if not sys.stdout.isatty():
        worker.spinner = None  # its cursor codes belong on a terminal, not in a log file
    worker.execute_from_commandline()
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from .topics import ALL_TOPICS
    from .tools.embedded import EmbeddedBroker, create_topics

    with EmbeddedBroker(port=args.port) as broker:
        asyncio.run(create_topics(broker.bootstrap, ALL_TOPICS, args.partitions))
        print(broker.bootstrap, flush=True)
        print(f"embedded Tansu broker (pid {broker.process.pid if broker.process else '?'}), topics: "
              f"{', '.join(ALL_TOPICS)}; Ctrl-C to stop", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            if broker.process is None or broker.process.poll() is not None:
                print(f"embedded broker died: {broker.log_tail()}", file=sys.stderr)
                return 1
    return 0


COMMANDS = {"summary": cmd_summary, "replay": cmd_replay, "run": cmd_run, "worker": cmd_worker, "broker": cmd_broker}


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but an unknown flag is reported with its command's usage."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in given if not a.startswith("-")), None)
    args = parse_args(build_parser(command if command in PLUGIN_COMMANDS else ""), given)
    logging.basicConfig(
        level=(getattr(args, "log_level", None) or "warning").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler = getattr(args, "func", None) or COMMANDS[args.command]
        return int(handler(args))
    except ConfigError as exc:
        print(f"cdrwatch {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `cdrwatch … | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
