"""`cdrwatch bench`'s offline parts (the broker parts run in `make bench`, not in the test suite)."""

from __future__ import annotations

from typing import Any

from streams.tools.bench import (BUSY_CALLS, BenchResult, compiled, format_scale_out, measure_busy_user,
                                 synthetic_stream)
from streams.tools.workers import cpu_seconds, machine_cpu_seconds


def test_a_busy_month_is_kept_whole_in_records_of_bounded_size() -> None:
    small, big = measure_busy_user(50), measure_busy_user(5_000)
    assert small["us_per_cdr"] > 0 and big["us_per_cdr"] > 0
    assert big["state_bytes"] > 40 * small["state_bytes"]  # the month's calls are kept for re-billing
    # ...in a log: each write re-encodes the month's head, not the month
    assert big["largest_record"] < 32 * 1024 and big["written_per_cdr"] < 2 * small["written_per_cdr"]


def test_the_report_names_every_figure() -> None:
    figures = {
        "cdrs": 300_000, "users": 20_000, "partitions": 4, "ceiling_cdr_per_s": 180_000.0,
        "naive_cdr_per_s": 4_000.0, "pipeline_cdr_per_s": 10_000.0, "pipeline_vs_naive": 2.5,
        "pipeline_vs_ceiling": 0.056, "latency_rate": 5_000.0, "alert_latency_p50_ms": 40.0,
        "alert_latency_p99_ms": 120.0, "latency_alerts": 1_000, "latency_rate_quarter": 2_500.0,
        "alert_latency_p50_ms_quarter": 20.0, "alert_latency_p99_ms_quarter": 80.0, "latency_alerts_quarter": 500, "bytes_per_user_month": 1_400.0,
        "bytes_per_user_month_small": 1_300.0, "peak_rss_mib": 2_000.0, "compiled": compiled(),
        **{f"busy_{n}_us_per_cdr": 50.0 for n in BUSY_CALLS},
        **{f"busy_{n}_written_per_cdr": 120.0 for n in BUSY_CALLS},
        **{f"busy_{n}_largest_record": 2048 for n in BUSY_CALLS},
        **{f"busy_{n}_state_bytes": 1024 * n for n in BUSY_CALLS},
    }
    text = BenchResult(figures).format()
    assert "pipeline (cdrwatch, all rules)         10,000 CDR/s" in text
    assert "pipeline/naive 2.50x" in text
    assert "alert latency at 2,500 CDR/s: p50 20 ms, p99 80 ms (500 alerts)" in text
    assert "500,000 calls in the month (every rule, records as written, no broker): 50 µs/CDR, 120 B written/CDR, " \
        "largest record 2.0 KiB, state 500,000 KiB" in text
    assert "core compiled with mypyc: " in text


def test_synthetic_stream_is_deterministic_and_keyed_by_user() -> None:
    a, b = synthetic_stream(50, 500), synthetic_stream(50, 500)
    assert a.cdrs == b.cdrs and len(a.cdrs) == 500 and len(a.registrations) == 50
    assert all(value.startswith(b'{"event":"end"') and key.decode() in value.decode() for key, value in a.cdrs)


def _scale_run(workers: int, rate: float, cpu: list[float]) -> dict[str, Any]:
    return {"workers": workers, "records": 320_000, "seconds": 320_000 / rate, "cdr_per_s": rate,
            "processed_before_start": 0, "from_first_cdr_per_s": rate, "worker_cpu_s": cpu, "broker_cpu_s": 4.0,
            "records_per_worker_cpu_s": 320_000 / sum(cpu), "machine_busy_cores": 1.9, "machine_cores": 2.0,
            "others_cores": 0.1, "partitions": [[0, 1, 2, 3]] if workers == 1 else [[0, 2], [1, 3]]}


def test_the_scale_out_report_names_both_runs_their_ratio_and_each_workers_cpu() -> None:
    figures = {"cdrs": 300_000, "users": 20_000, "partitions": 4, "broker": "embedded Tansu", "cpus": 2,
               "scale_out_1": _scale_run(1, 8_000.0, [32.0]), "scale_out_2": _scale_run(2, 11_000.0, [16.5, 17.25]),
               "scale_out_ratio": 11_000 / 8_000, "compiled": compiled()}
    text = format_scale_out(figures)
    assert "scale-out: 1 worker 8,000 CDR/s, 2 workers 11,000 CDR/s (Y/X = 1.38), CPU s per worker [32.0] / " \
        "[16.5, 17.2]" in text
    assert "2 workers: 320,000 records in 29.1 s, partitions [[0, 2], [1, 3]]" in text
    assert "(10,000 records per worker CPU s), broker 4.0 CPU s, machine busy 1.90 of 2 cores" in text


def test_cpu_seconds_grow_with_work() -> None:
    import os

    before, (busy0, total0) = cpu_seconds(os.getpid()), machine_cpu_seconds()
    sum(n * n for n in range(3_000_000))
    assert cpu_seconds(os.getpid()) > before
    busy1, total1 = machine_cpu_seconds()
    assert busy1 > busy0 and total1 - total0 >= busy1 - busy0 - 1e-6  # idle time, if any, is the difference
