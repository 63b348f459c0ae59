"""End to end on the real stack: simulator records -> Kafka -> `faust -A app worker` -> Redis + lake.

The expected result is the same records run through the pipeline in-process, in the
deterministic merge order (agents/ordering.py), with dict state and a file lake;
the feature math itself is checked against pandas/numpy oracles in test_features*.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest
import redis

from sinks.lake import Lake
from sinks.online import read_features
from simulator.config import SimulationConfig
from simulator.model import iter_records
from tests.harness import (WorkerProcess, another_worker, count_offline, in_merge_order, offline_rows, produce, run_oracle,
                           same_vector, scrape_metrics, wait_for)

pytestmark = pytest.mark.stack


def sim_items(seed: int, patients: int, hours: float) -> list[tuple[str, bytes, bytes, int]]:
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=hours + 1)
    cfg = SimulationConfig(seed=seed, n_patients=patients, start=start, days=hours / 24, fraction_monitored=0.5)
    return [(r.topic, r.key, r.value, r.timestamp_ms) for r in iter_records(cfg)]


def _provenance(table) -> list[tuple[str, int, int]]:  # noqa: ANN001
    return list(zip(table["source_topic"].to_pylist(), table["source_partition"].to_pylist(),
                    table["source_offset"].to_pylist()))


def assert_matches_oracle(settings, oracle, lake: Lake, client: redis.Redis) -> None:
    # Online store: every patient's latest vector, bit for bit.
    assert oracle.online, "the oracle produced no vectors"
    for patient_id, (ts_ms, event_id, vector) in oracle.online.items():
        got = read_features(client, patient_id)
        assert got is not None, patient_id
        values, meta = got
        where = f"{patient_id}: got {meta['updated_at_ms']} {meta.get('event_id')}, want {ts_ms} {event_id}"
        assert int(meta["updated_at_ms"]) == ts_ms, where
        assert same_vector(values, vector), where
    # Offline store: the same rows, no duplicates, no gaps.
    got, want = offline_rows(lake), offline_rows(oracle.lake)
    keys, want_keys = _provenance(got), _provenance(want)
    assert got.num_rows == want.num_rows == oracle.offline_rows, \
        f"missing {sorted(set(want_keys) - set(keys))[:10]}, unexpected {sorted(set(keys) - set(want_keys))[:10]}"
    assert len(set(keys)) == len(keys), "duplicate rows in the offline store"
    assert got.drop_columns(["date"]).to_pandas().equals(want.drop_columns(["date"]).to_pandas())


def test_simulated_stream_reaches_redis_and_lake(env, tmp_path):
    settings, client, workers = env
    produced = produce(settings, sim_items(seed=11, patients=8, hours=6))
    oracle = run_oracle(settings, in_merge_order(produced), tmp_path / "oracle-lake")
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    worker.wait_ready()
    lake = Lake.from_settings(settings)
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 180, "the offline store to fill")
    assert_matches_oracle(settings, oracle, lake, client)
    # Bronze holds every record exactly as received, bad ones included.
    bronze = [orjson.loads(line) for obj in lake.list("raw/") for line in lake.get(obj.path).splitlines()]
    assert len(bronze) == len(produced.records)
    assert {(b["topic"], b["partition"], b["offset"]) for b in bronze} == \
        {(r.topic, r.partition, r.offset) for r in produced.records}
    # Redis hashes carry the TTL and metadata.
    some = next(iter(oracle.online))
    assert 0 < client.ttl(f"patient:{some}:features") <= 48 * 3600
    # The worker's Prometheus metrics account for every record.
    metrics = scrape_metrics(settings)
    consumed = sum(v for k, v in metrics.items() if k.startswith("vitalstream_events_in_total{"))
    assert consumed >= len(produced.records)
    rejected = sum(v for k, v in metrics.items() if k.startswith("vitalstream_rejected_total{"))
    assert rejected == len(oracle.deadletters)
    for name in ("vitalstream_feature_update_latency_seconds_count", "vitalstream_flush_rows_count{sink=\"offline\"}",
                 "vitalstream_consumer_lag{", "vitalstream_flush_seconds_count{sink=\"bronze\"}"):
        assert any(k.startswith(name) for k in metrics), name
    # Each feature update's record is observed once in the latency histogram, when the call writing its vector
    # (or a newer one of its patient) returned.
    def latency_counts() -> tuple[float, float]:
        m = scrape_metrics(settings)
        return m.get("vitalstream_feature_update_latency_seconds_count", 0.0), m["vitalstream_feature_updates_total"]

    wait_for(lambda: (lambda observed, updates: observed == updates > 0)(*latency_counts()), 30,
             "every feature update's latency observed")


def simulated_backlog(env, tmp_path, seed: int, patients: int, hours: float):
    """Produce a simulated history (every clinical topic): (settings, client, workers, oracle, lake)."""
    settings, client, workers = env
    produced = produce(settings, sim_items(seed=seed, patients=patients, hours=hours))
    oracle = run_oracle(settings, in_merge_order(produced), tmp_path / "oracle-lake")
    return settings, client, workers, oracle, Lake.from_settings(settings)


def second_worker(settings, tmp_path) -> WorkerProcess:
    """A second worker of the same group, with its own state folder (not started)."""
    return WorkerProcess(another_worker(settings, tmp_path / "worker-data-2"), tmp_path / "worker2.log")


def _first_worker_midway(env, tmp_path, seed: int, patients: int, hours: float):
    """Produce a simulated history, start a worker, and return once part (not all) of it is in the lake."""
    settings, client, workers, oracle, lake = simulated_backlog(env, tmp_path, seed, patients, hours)
    first = WorkerProcess(settings, tmp_path / "worker1.log").start()
    workers.append(first)
    first.wait_ready()
    wait_for(lambda: 0 < count_offline(lake), 120, "the first rows in the offline store")
    return settings, client, workers, oracle, lake, first


def test_kill9_mid_stream_loses_nothing_and_duplicates_nothing(env, tmp_path):
    # All clinical topics: the restarted worker must also resume the cross-topic merge order, with feature
    # state (written per flush) ahead of the committed offsets of some topics.
    settings, client, workers, oracle, lake, first = _first_worker_midway(env, tmp_path, seed=12, patients=24, hours=24)
    assert count_offline(lake) < oracle.offline_rows, "the worker finished before it could be killed"
    first.kill9()
    second = WorkerProcess(settings, tmp_path / "worker2.log").start()
    workers.append(second)
    second.wait_ready()
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 240, "the restarted worker to finish")
    assert_matches_oracle(settings, oracle, lake, client)


def test_second_worker_joining_mid_stream_rebalances_without_loss(env, tmp_path):
    # The first worker keeps some partitions: records it fetched before the rebalance but had not taken yet
    # must not be merged ahead of the records re-read from the committed offsets (agents/clinical.py: _current).
    settings, client, workers, oracle, lake, first = _first_worker_midway(env, tmp_path, seed=13, patients=24, hours=24)
    # A second worker of the same group: the partitions are split between the two (a rebalance).
    second = second_worker(settings, tmp_path).start()
    workers.append(second)
    assert count_offline(lake) < oracle.offline_rows, "the first worker finished before the second joined"
    second.wait_ready()
    assert "assigned" in second.log_text().lower()
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 240, "both workers to finish")
    assert_matches_oracle(settings, oracle, lake, client)
    assert first.proc.poll() is None and second.proc.poll() is None, "a worker died in the rebalance"


def test_two_workers_starting_together_on_a_backlog_both_finish(env, tmp_path):
    # Each joins while the other starts: rebalances during startup, records fetched before Faust's seek to the
    # committed offsets, partitions sought back (agents/clinical.py: _in_sequence). A worker whose every record
    # was out of sequence once sat idle for good (bench/stream_throughput.py, two workers on a backlog): its
    # fetch watchdog only ran after a first batch of the new assignment.
    settings, client, workers, oracle, lake = simulated_backlog(env, tmp_path, seed=14, patients=24, hours=24)
    first = WorkerProcess(settings, tmp_path / "worker1.log").start()
    second = second_worker(settings, tmp_path).start()
    workers += [first, second]
    # Not wait_ready: Faust logs "Worker]: Ready" not at all for a worker whose first assignment a rebalance cut
    # short. Every completed recovery logs "Worker ready".
    wait_for(lambda: all("Worker ready" in w.log_text() or w.proc.poll() is not None for w in (first, second)),
             120, "both workers to be ready")
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 240, "both workers to finish")
    assert_matches_oracle(settings, oracle, lake, client)
    assert first.proc.poll() is None and second.proc.poll() is None, "a worker died"


def test_stopping_mid_stream_exits_cleanly_and_a_restart_finishes(env, tmp_path):
    # SIGTERM while a backlog is being processed: the stop hook waits for the micro-batch under way (it yields
    # to the event loop mid-batch) and the batch being completed, so the worker exits 0, not 70 from records
    # processed against stopped tables; a restarted worker ends where an uninterrupted one would.
    settings, client, workers, oracle, lake, first = _first_worker_midway(env, tmp_path, seed=14, patients=80, hours=24)
    assert count_offline(lake) < oracle.offline_rows, "the worker finished before it could be stopped"
    first.stop()
    log = first.log_text()
    assert first.proc.returncode == 0, log[-3000:]
    assert "exiting (70)" not in log and "processing_error" not in log, log[-3000:]
    second = WorkerProcess(settings, tmp_path / "worker2.log").start()
    workers.append(second)
    second.wait_ready()
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 240, "the restarted worker to finish")
    assert_matches_oracle(settings, oracle, lake, client)
