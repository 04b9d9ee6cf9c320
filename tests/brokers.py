"""What an integration test needs of a broker it did not start, whichever broker it is."""

from __future__ import annotations

from typing import Protocol


class Broker(Protocol):
    """The embedded Tansu broker (``streams.tools.embedded.EmbeddedBroker``) or Apache Kafka
    (``tests.kafka_cluster.KafkaCluster``): where to connect."""

    @property
    def url(self) -> str: ...

    @property
    def bootstrap(self) -> str: ...
