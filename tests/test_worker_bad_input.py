"""Bad input never knocks the worker over: each bad record lands in the dead-letter topic with its reason."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import redis

from sinks.lake import Lake
from sinks.online import read_features
from streams import topics
from tests.harness import WorkerProcess, isolated_settings, produce, scrape_metrics, wait_for

pytestmark = pytest.mark.stack

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def vitals(patient: str, minutes_ago: float, **fields) -> dict:
    ts = NOW - timedelta(minutes=minutes_ago)
    return {"event_id": str(uuid.uuid4()), "patient_id": patient, "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "source": "monitor", "heart_rate": 80, "bp_systolic": 120, "bp_diastolic": 80, "resp_rate": 16,
            "spo2": 97, "temperature": 37.0, "temperature_unit": "C", "consciousness": "A", "on_oxygen": False,
            **fields}


def ms(minutes_ago: float) -> int:
    return int((NOW - timedelta(minutes=minutes_ago)).timestamp() * 1000)


def corpus() -> tuple[list[tuple[str, bytes, bytes, int]], dict[str, int]]:
    """(items to produce, expected dead letters per reason)."""
    good, bad, expected = [], [], {}

    def reject(reason: str, value: bytes | dict, key: bytes = b"PT00002", topic: str = topics.VITALS,
               minutes_ago: float = 30) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        bad.append((topic, key, raw, ms(minutes_ago)))
        expected[reason] = expected.get(reason, 0) + 1

    for i in range(60):  # PT00001: a clean minute-by-minute stream
        good.append((topics.VITALS, b"PT00001", orjson.dumps(vitals("PT00001", 60 - i, heart_rate=70 + i % 7)),
                     ms(60 - i)))
    reject("malformed_json", b'{"patient_id": "PT00002", "heart_rate": ')
    reject("malformed_json", b"\xff\xfe\x00binary")
    reject("not_an_object", b'"just a string"')
    reject("wrong_type", vitals("PT00002", 30, heart_rate="fast"))
    reject("wrong_type", vitals("PT00002", 30, on_oxygen="no"))
    reject("missing_field", {k: v for k, v in vitals("PT00002", 30).items() if k != "patient_id"})
    reject("missing_field", {k: v for k, v in vitals("PT00002", 30).items() if k != "event_id"})
    reject("out_of_range", vitals("PT00002", 30, heart_rate=1200))
    reject("out_of_range", vitals("PT00002", 30, spo2=140))
    reject("oversized", orjson.dumps(vitals("PT00002", 30, note="x" * 70_000)))
    reject("bad_timestamp", vitals("PT00002", 30, timestamp="last tuesday"))
    reject("bad_timestamp", vitals("PT00002", 30, timestamp="2026-03-01T12:00:00"))
    reject("key_mismatch", vitals("PT00002", 30), key=b"PT00099")
    reject("invalid_value", {"event_id": str(uuid.uuid4()), "patient_id": "PT00002",
                             "timestamp": NOW.isoformat(), "test": "unobtainium", "value": 1, "unit": "U/L"},
           topic=topics.LABS)
    # Adverse events skip the merge (they are labels): their dead letters are counted too.
    reject("wrong_type", {"event_id": str(uuid.uuid4()), "patient_id": "PT00002", "onset_time": NOW.isoformat(),
                          "reported_time": NOW.isoformat(), "type": "sepsis", "severity": "high", "serious": True},
           topic=topics.ADVERSE_EVENTS)
    # Two hours behind PT00001's latest event: beyond the 1 h allowed lateness.
    reject("late_event", vitals("PT00001", 180), key=b"PT00001", minutes_ago=0)
    # Unknown extra fields are not an error.
    good.append((topics.VITALS, b"PT00003", orjson.dumps(vitals("PT00003", 5, ward="7B", firmware="2.1")), ms(5)))
    # Bad records in the middle of the good stream, not only at its end.
    items = good[:30] + bad + good[30:]
    return items, expected


def read_deadletters(settings, expected_total: int, timeout_s: float = 120) -> list[dict]:
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[dict]:
        consumer = AIOKafkaConsumer(topics.kafka_name(settings, topics.DEADLETTER),
                                    bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        out: list[dict] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while len(out) < expected_total and loop.time() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                out += [orjson.loads(m.value) for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def test_bad_records_are_dead_lettered_and_good_ones_flow(stack, unique, tmp_path):
    settings = isolated_settings(stack, unique, tmp_path)
    from streams.topics import ensure_topics

    ensure_topics(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    items, expected = corpus()
    produced = produce(settings, items)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        dead = read_deadletters(settings, sum(expected.values()))
        got: dict[str, int] = {}
        for d in dead:
            got[d["reason"]] = got.get(d["reason"], 0) + 1
        assert got == expected
        for d in dead:  # provenance and the original payload
            src = next(r for r in produced.records if (r.partition, r.offset) == (d["source_partition"],
                                                                                   d["source_offset"])
                       and topics.kafka_name(settings, r.topic) == topics.kafka_name(settings, d["source_topic"]))
            assert d["detail"]
            payload = d["payload"].encode() if d["payload_encoding"] == "utf-8" else __import__("base64").b64decode(
                d["payload"])
            assert payload == src.value
        # The good stream was processed all the way through, around the bad records.
        wait_for(lambda: read_features(client, "PT00001") is not None and
                 int(read_features(client, "PT00001")[1]["updated_at_ms"]) == ms(1), 60, "PT00001's last vector")
        values, meta = read_features(client, "PT00001")
        from tables.features.registry import FEATURE_INDEX

        assert values[FEATURE_INDEX["heart_rate_count_1h"]] == 60
        assert read_features(client, "PT00003") is not None  # extra fields accepted
        # Bronze kept every record verbatim, including the extra fields and the bad bytes.
        lake = Lake.from_settings(settings)
        wait_for(lambda: sum(len(lake.get(o.path).splitlines()) for o in lake.list("raw/")) == len(items), 60,
                 "bronze to hold every record")
        from sinks.bronze import original_value

        archived = {original_value(orjson.loads(line)) for o in lake.list("raw/") for line in lake.get(o.path).splitlines()}
        assert {v for _, _, v, _ in items} <= archived
        # The worker's metrics count every dead letter, by reason and as records out.
        def deadletter_metrics() -> tuple[float, dict[str, float]]:
            m = scrape_metrics(settings)
            by_reason = {k.split('reason="')[1].split('"')[0]: v for k, v in m.items()
                         if k.startswith("vitalstream_rejected_total{")}
            return m.get('vitalstream_events_out_total{sink="deadletter"}', 0.0), by_reason

        wait_for(lambda: deadletter_metrics()[0] >= len(dead), 30, "the dead-letter metrics")
        out, by_reason = deadletter_metrics()
        assert out == len(dead)
        assert {r: int(n) for r, n in by_reason.items() if n} == expected
        assert worker.proc.poll() is None, "the worker died"
    finally:
        worker.stop()
