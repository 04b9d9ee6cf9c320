"""The changelog writer's producer, in process: aiokafka's own record batches (no connection is
needed to build them), each send recorded with its changelog partition. A test answers the sends
itself, or lets them be acknowledged at once."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer


class RecordingProducer:
    def __init__(self, acknowledge: bool = False) -> None:
        self._real = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
        self.acknowledge = acknowledge
        self.sent: list[tuple[str, int, int, asyncio.Future[Any]]] = []  # (topic, partition, records, delivery)
        self._offsets: dict[tuple[str, int], int] = {}

    def create_batch(self) -> Any:
        return self._real.create_batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        count = batch.record_count()
        self.sent.append((topic, partition, count, fut))
        if self.acknowledge:
            offset = self._offsets.get((topic, partition), 0)
            self._offsets[(topic, partition)] = offset + count
            fut.set_result(type("Metadata", (), {"offset": offset})())
        return fut

    def records(self) -> dict[tuple[str, int], int]:
        """Records sent, per (changelog topic, partition)."""
        out: dict[tuple[str, int], int] = {}
        for topic, partition, count, _fut in self.sent:
            out[(topic, partition)] = out.get((topic, partition), 0) + count
        return out
