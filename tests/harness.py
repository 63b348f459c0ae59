"""Helpers for end-to-end tests: an isolated worker process, a producer and an in-process oracle.

Each test gets its own topic prefix, consumer group, lake prefix, Redis database,
RocksDB directory and ports, so tests share the one local stack without sharing data.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from agents.ordering import MERGE_RANK, merge_order
from agents.pipeline import Pipeline, RawRecord
from sinks.lake import Lake
from sinks.offline import read_offline
from sinks.online import MemoryOnlineStore
from streams import topics
from tables.state import DictStateStore
from vitalstream.settings import Settings

REPO = Path(__file__).resolve().parent.parent
_next_redis_db = iter(range(1, 16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    """Poll until predicate() is true; fail the test naming what did not happen."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # not ready yet
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" +
                         (f" (last error: {last_error!r})" if last_error else ""))


def isolated_settings(base: Settings, unique: str, tmp_path: Path, partitions: int = 2) -> Settings:
    db = next(_next_redis_db)
    redis_base = base.redis_url.rsplit("/", 1)[0]
    return base.model_copy(update={
        "topic_prefix": f"t{unique}.",
        "app_id": f"vs-{unique}",
        "lake_uri": f"s3://{base.lake_bucket}/tests/{unique}",
        "redis_url": f"{redis_base}/{db}",
        "worker_data_dir": tmp_path / "worker-data",
        "worker_port": free_port(),
        "metrics_port": free_port(),
        "topic_partitions": partitions,
        "flush_max_seconds": 1.0,
    })


def another_worker(settings: Settings, data_dir: Path) -> Settings:
    """Settings for one more worker of the same group on this machine: its own ports and table data."""
    return settings.model_copy(update={"worker_port": free_port(), "metrics_port": free_port(),
                                       "worker_data_dir": data_dir})


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALSTREAM_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if name.endswith(("password", "secret_access_key", "access_key_id")):
            value = getattr(settings, name).get_secret_value()
        env[f"VITALSTREAM_{name.upper()}"] = value if isinstance(value, str) else __import__("json").dumps(value)
    return env


_READY = "Worker]: Ready"


class WorkerProcess:
    """`faust -A app worker` in a subprocess with the test's settings."""

    def __init__(self, settings: Settings, log_path: Path, code_dir: Path = REPO) -> None:
        """code_dir: the checkout whose worker runs (`python -m faust` imports app, agents, ... from there)."""
        self.settings = settings
        self.log_path = log_path
        self.code_dir = code_dir
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        # Readiness counts from this start: a restart appends to the same log, and a worker may become ready
        # before anyone waits for it (e.g. while the test waits for another worker).
        self._ready_mark = self.log_text().count(_READY) if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
                                     cwd=self.code_dir, env=settings_env(self.settings), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90) -> None:
        wait_for(lambda: self.log_text().count(_READY) > self._ready_mark or self.proc.poll() is not None,
                 timeout_s, "the worker to be ready")
        assert self.proc.poll() is None, f"worker exited:\n{self.log_text()[-3000:]}"

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Produced:
    records: list[RawRecord]  # in production order, with the partition and offset Kafka gave each


def produce(settings: Settings, items: Iterable[tuple[str, bytes | None, bytes, int]]) -> Produced:
    """Send (logical topic, key, value, timestamp_ms) in order; returns them with their Kafka coordinates."""
    from aiokafka import AIOKafkaProducer

    async def run() -> list[RawRecord]:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
                                    enable_idempotence=True, max_request_size=2 * 1024 * 1024)
        await producer.start()
        try:
            futures = []
            batch = list(items)
            for topic, key, value, ts in batch:
                futures.append(await producer.send(topics.kafka_name(settings, topic), value, key=key,
                                                   timestamp_ms=ts))
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return [RawRecord(t, m.partition, m.offset, ts, k, v) for (t, k, v, ts), m in zip(batch, metas)]

    return Produced(asyncio.run(run()))


@dataclass
class OracleResult:
    online: dict[str, tuple[int, str, np.ndarray]]
    offline_rows: int
    deadletters: list[tuple[str, str]]  # (reason, source offset id)
    lake: Lake


def run_oracle(settings: Settings, produced: Produced, lake_dir: Path) -> OracleResult:
    """The same records through the pipeline in-process (no Kafka, no Faust, dict state, file lake)."""
    lake = Lake.from_settings(settings, f"file://{lake_dir}")
    online = MemoryOnlineStore()
    pipeline = Pipeline(lake=lake, store=DictStateStore(), online=online,
                        allowed_lateness_ms=settings.allowed_lateness_ms)
    dead = []
    # Callers pass the records in the order the worker applies them (see in_merge_order).
    for rec in produced.records:
        d = pipeline.process(rec)
        if d is not None:
            dead.append((d.reason, f"{rec.topic}/{rec.partition}/{rec.offset}"))
    pipeline.flush_online()
    report = pipeline.flush_lake()
    return OracleResult(online.vectors, report.rows.get("offline", 0), dead, lake)


def same_vector(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def in_merge_order(produced: Produced) -> Produced:
    """The order the worker applies: per partition number, the clinical topics merged by timestamp."""
    by_partition: dict[int, dict[str, list]] = {}
    others = []
    for rec in produced.records:
        if rec.topic in MERGE_RANK:
            by_partition.setdefault(rec.partition, {}).setdefault(rec.topic, []).append(rec)
        else:
            others.append(rec)
    ordered = [r for p in sorted(by_partition) for r in merge_order(
        sorted(recs, key=lambda r: r.offset) for recs in by_partition[p].values())]
    return Produced(ordered + others)


def offline_rows(lake: Lake, start: str | None = None, end: str | None = None):
    """The offline store sorted by Kafka provenance (a stable order to compare)."""
    table = read_offline(lake, start, end)
    return table.sort_by([("source_topic", "ascending"), ("source_partition", "ascending"),
                          ("source_offset", "ascending")])


def count_offline(lake: Lake) -> int:
    try:
        return read_offline(lake).num_rows
    except Exception:  # the store is being written: not ready yet
        return 0


def scrape_metrics(settings: Settings) -> dict[str, float]:
    """A worker's Prometheus metrics: 'name{labels}' -> value."""
    import urllib.request

    url = f"http://{settings.host}:{settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
