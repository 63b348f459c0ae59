"""Topic definitions and their idempotent creation.

Every patient topic is keyed by patient_id, so one patient's events stay in order
on one partition and one worker owns the patient's state.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from vitalstream.settings import Settings

VITALS = "clinical.vitals"
LABS = "clinical.labs"
MEDICATIONS = "clinical.medications"
ADVERSE_EVENTS = "clinical.adverse_events"
PATIENTS = "clinical.patients"
DEADLETTER = "clinical.deadletter"
RISK_SCORES = "risk.scores"

CLINICAL_TOPICS: tuple[str, ...] = (VITALS, LABS, MEDICATIONS, ADVERSE_EVENTS, PATIENTS)
ALL_TOPICS: tuple[str, ...] = (*CLINICAL_TOPICS, DEADLETTER, RISK_SCORES)


def kafka_name(settings: Settings, topic: str) -> str:
    """The Kafka topic name of a logical topic (with the configured prefix)."""
    return settings.topic_prefix + topic


def logical_name(settings: Settings, kafka_topic: str) -> str:
    """The logical topic of a Kafka topic name (the prefix removed)."""
    prefix = settings.topic_prefix
    return kafka_topic[len(prefix):] if prefix and kafka_topic.startswith(prefix) else kafka_topic


# Compacted topics: their logs have holes in the offsets by design (all others are contiguous).
COMPACTED: frozenset[str] = frozenset({PATIENTS})


def has_offset_holes(settings: Settings, kafka_topic: str) -> bool:
    """True for a compacted topic, whose offsets have holes; elsewhere a hole means records were skipped."""
    return logical_name(settings, kafka_topic) in COMPACTED


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Partitions, replication and retention of every topic, from settings."""
    p, r = settings.topic_partitions, settings.topic_replication
    keep = {"retention.ms": str(settings.clinical_retention_ms), "retention.bytes": "-1"}
    name = lambda t: kafka_name(settings, t)  # noqa: E731
    specs = [TopicSpec(name(t), p, r, dict(keep)) for t in (VITALS, LABS, MEDICATIONS, ADVERSE_EVENTS)]
    # Latest record per patient wins; compaction keeps it forever. But not before the lag: enrolments and ends
    # of observation younger than that are all kept, so replays and labels over that span see every one
    # (docs/replay.md).
    specs.append(TopicSpec(name(PATIENTS), p, r, {"cleanup.policy": "compact", "retention.ms": "-1",
                                                  "min.compaction.lag.ms": str(settings.patients_compaction_lag_ms)}))
    specs.append(TopicSpec(name(DEADLETTER), p, r, {"retention.ms": str(settings.deadletter_retention_ms)}))
    specs.append(TopicSpec(name(RISK_SCORES), p, r, {"retention.ms": str(settings.scores_retention_ms)}))
    return specs


async def ensure_topics_async(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create missing topics and bring existing ones to the spec's config; return {topic: "created"|"exists"}."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        existing = set(await admin.list_topics())
        result: dict[str, str] = {}
        missing = []
        for spec in topic_specs(settings):
            if spec.name in existing:
                # Reconcile the config of an existing topic with the spec (e.g. a setting added since).
                await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, spec.config)])
                result[spec.name] = "exists"
            else:
                missing.append(NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.config))
        for new in missing:  # one by one: a race with another creator is not an error
            try:
                await admin.create_topics([new])
                result[new.name] = "created"
            except TopicAlreadyExistsError:
                result[new.name] = "exists"
        return result
    finally:
        await admin.close()


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    return asyncio.run(ensure_topics_async(settings, timeout_s))
