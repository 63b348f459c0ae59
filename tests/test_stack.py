"""Smoke tests against the real local services started by `vitalstream stack up`."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.stack


def test_kafka_produce_and_consume(stack, unique):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"test.smoke.{unique}"

    async def roundtrip() -> tuple[bytes, bytes]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        await producer.send_and_wait(topic, b'{"hello": "kafka"}', key=b"PT00001")
        await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest",
                                    group_id=f"smoke-{unique}")
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        return msg.key, msg.value

    key, value = asyncio.run(roundtrip())
    assert key == b"PT00001"
    assert json.loads(value) == {"hello": "kafka"}


def test_topics_exist_with_retention(stack):
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.topics import ALL_TOPICS, topic_specs

    async def describe() -> tuple[set[str], dict[str, dict[str, str]]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            names = set(await admin.list_topics())
            resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in ALL_TOPICS]
            responses = await admin.describe_configs(resources)
            configs: dict[str, dict[str, str]] = {}
            for response in responses:
                for _err, _msg, _type, name, entries in response.resources:
                    configs[name] = {e[0]: e[1] for e in entries}
            return names, configs
        finally:
            await admin.close()

    names, configs = asyncio.run(describe())
    assert set(ALL_TOPICS) <= names
    for spec in topic_specs(stack):
        for key, value in spec.config.items():
            assert configs[spec.name][key] == value, (spec.name, key)
    assert configs["clinical.patients"]["cleanup.policy"] == "compact"
    assert int(configs["clinical.patients"]["min.compaction.lag.ms"]) >= 365 * 24 * 3600 * 1000  # replayable
    assert configs["clinical.vitals"]["retention.ms"] == "-1"


def test_redis_ping_set_get(stack, unique):
    import redis

    client = redis.Redis.from_url(stack.redis_url)
    assert client.ping() is True
    client.set(f"test:{unique}", "ok", ex=60)
    assert client.get(f"test:{unique}") == b"ok"
    client.delete(f"test:{unique}")
    # The online store's persistence and hash encoding (vitalstream/stack/services.py: Redis).
    config = client.config_get("*")
    assert config["appendonly"] == "yes" and config["hash-max-listpack-entries"] == "128"
    assert int(config["auto-aof-rewrite-min-size"]) == 1 << 30, \
        "a Redis started before this setting: `vitalstream stack down && vitalstream stack up` applies it"


def test_postgres_query(stack):
    import psycopg2

    with psycopg2.connect(stack.postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database(), 6 * 7")
        assert cur.fetchone() == (stack.postgres_db, 42)


def test_s3_put_get(stack, unique):
    from vitalstream.stack.services import ObjectStore

    client = ObjectStore(stack).client()
    key = f"tests/{unique}.txt"
    client.put_object(Bucket=stack.lake_bucket, Key=key, Body=b"lake ok")
    assert client.get_object(Bucket=stack.lake_bucket, Key=key)["Body"].read() == b"lake ok"
    client.delete_object(Bucket=stack.lake_bucket, Key=key)


def test_mlflow_experiment_on_postgres(stack, unique):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_tracking_uri)
    exp_id = client.create_experiment(f"smoke-{unique}")
    exp = client.get_experiment(exp_id)
    assert exp.name == f"smoke-{unique}"
    # Artifacts are proxied by the tracking server into the lake.
    assert exp.artifact_location.startswith("mlflow-artifacts:") or exp.artifact_location.startswith("s3://")
    assert mlflow.get_tracking_uri()  # import side effects are fine


def test_status_json_reports_every_service(stack):
    out = subprocess.run([sys.executable, "-m", "vitalstream.cli", "stack", "status", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"kafka", "redis", "postgres", "s3", "mlflow"}
    assert all(entry["healthy"] for entry in data.values())
    assert all(entry["url"] for entry in data.values())
    assert "vitalstream-local" not in out.stdout  # no password in the output


def test_stack_up_is_idempotent(stack):
    out = subprocess.run([sys.executable, "-m", "vitalstream.cli", "stack", "up"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Stack is up" in out.stderr
