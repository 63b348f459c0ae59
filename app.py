"""The Faust app: `faust -A app worker -l info` starts a stream worker.

Agents live in agents/, tables in tables/; importing them registers them on `app`.
"""
from __future__ import annotations

import faust

from vitalstream.settings import get_settings

settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store=settings.table_store,
    datadir=str(settings.worker_data_dir),
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    processing_guarantee="at_least_once",  # exactly_once has open bugs; sinks are idempotent instead
    consumer_auto_offset_reset="earliest",
    broker_commit_interval=1.0,
    producer_acks=-1,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
    web_host=settings.host,
    web_bind=settings.host,
    web_port=settings.worker_port,
    web_enabled=True,
    autodiscover=False,
    stream_wait_empty=False,
)

import agents.clinical  # noqa: E402,F401  (registers the agents and tables)

if __name__ == "__main__":
    app.main()
