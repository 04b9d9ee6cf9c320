"""The faust.App and its settings, nothing else."""

from __future__ import annotations

import faust

from .settings import Settings


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        store=settings.store,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=settings.web_enabled,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
    )
