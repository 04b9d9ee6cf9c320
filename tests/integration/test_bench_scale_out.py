"""The benchmark's scale-out measure end to end, at a tiny size: two `cdrwatch worker` processes in
one consumer group share the partitions and the group commits every input record."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from streams.tools.bench import bench_settings, measure_scale_out, prefill, synthetic_stream
from streams.tools.replay import committed_offsets, end_offsets
from streams.topics import INPUT_TOPICS
from tests.brokers import Broker

pytestmark = pytest.mark.integration


def test_two_worker_processes_share_the_partitions_and_commit_every_record(tansu: Broker, tmp_path: Path) -> None:
    stream = synthetic_stream(200, 2_000, seed=3)
    settings = bench_settings(tansu.bootstrap, 4, tmp_path, uuid.uuid4().hex[:6])

    async def scenario() -> tuple[dict[str, object], dict[str, int], dict[str, int | None]]:
        await prefill(tansu.bootstrap, settings, stream)
        run = await measure_scale_out(settings, 2_200, 2, tmp_path, timeout_s=60)
        ends = await end_offsets(settings, [settings.topic(t) for t in INPUT_TOPICS])
        group = settings.with_(app_id=str(run["group"]))
        committed = await committed_offsets(group, list(ends))
        return run, {str(tp): end for tp, end in ends.items()}, {str(tp): off for tp, off in committed.items()}

    run, ends, committed = asyncio.run(scenario())
    assert sum(ends.values()) == 2_200  # 2,000 CDRs and 200 registrations
    # the group (this run's own) committed every input offset
    assert run["group"] != settings.app_id and run["workers"] == 2
    assert {tp: committed[tp] or 0 for tp in ends} == ends
    assert run["committed"] == run["input_end_offsets"] == 2_200
    # each worker held partitions of cdrs once the group settled, each partition one owner
    parts = run["partitions"]
    assert isinstance(parts, list) and len(parts) == 2 and all(parts), parts
    assert sorted(p for owned in parts for p in owned) == [0, 1, 2, 3]
    processed = run["processed"]
    assert isinstance(processed, list) and sum(processed) >= 2_200  # at least once, by the two together
    assert isinstance(run["worker_cpu_s"], list) and len(run["worker_cpu_s"]) == 2
