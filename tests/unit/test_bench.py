"""`cdrwatch bench`'s offline parts (the broker parts run in `make bench`, not in the test suite)."""

from __future__ import annotations

from streams.tools.bench import BUSY_CALLS, BenchResult, compiled, measure_busy_user, synthetic_stream


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
