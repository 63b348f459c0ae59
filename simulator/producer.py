"""Produce simulated records to Kafka: backdated history or a live, paced stream."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Iterable, Protocol

from .config import SimulationConfig
from .model import SimRecord, iso_ms, iter_records

MAX_BATCH_BYTES = 512 * 1024
PROGRESS_EVERY = 2_000  # records between progress-bar refreshes


class Producer(Protocol):
    """What we need from AIOKafkaProducer (tests pass a fake)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def flush(self) -> None: ...
    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None) -> "asyncio.Future[Any]": ...


async def start_kafka_producer(bootstrap: str) -> Producer:
    """Started AIOKafkaProducer; idempotent when the broker supports it."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import IncompatibleBrokerVersion, UnsupportedVersionError

    def make(idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=20,
            max_batch_size=MAX_BATCH_BYTES,
            compression_type=None,
            acks="all",
            enable_idempotence=idempotent,
        )

    producer = make(True)
    try:
        await producer.start()
    except (UnsupportedVersionError, IncompatibleBrokerVersion):
        await producer.stop()
        producer = make(False)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
    except BaseException:
        await producer.stop()  # release sockets before reporting e.g. a refused connection
        raise
    return producer


def history_config(config: SimulationConfig, days: float, end: datetime | None = None) -> SimulationConfig:
    """config shifted so that `days` of history end at `end` (default: now)."""
    end = (end or datetime.now(UTC)).astimezone(UTC)
    end = end.replace(microsecond=end.microsecond // 1000 * 1000)
    return replace(config, start=end - timedelta(days=days), days=days)


def live_config(config: SimulationConfig, history_days: float = 0.0, now: datetime | None = None) -> SimulationConfig:
    """Open-ended config starting now, or `history_days` before now (backlog first)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    start = now.replace(microsecond=now.microsecond // 1000 * 1000) - timedelta(days=history_days)
    window = config.enrollment_window_hours
    if window is None and history_days > 0:  # stagger like a history run of that length
        window = min(48.0, history_days * 24.0 / 4.0)
    return replace(config, start=start, days=None, enrollment_window_hours=window)


class _Stats:
    """Counts for the summary and the progress bar."""

    def __init__(self) -> None:
        self.topics: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.records = 0
        self.last_ms: int | None = None
        self.t0 = time.perf_counter()
        self.errors: list[BaseException] = []

    def add(self, rec: SimRecord) -> None:
        self.records += 1
        self.last_ms = rec.timestamp_ms
        self.topics[rec.topic] += 1
        if rec.fault:
            for kind in rec.fault.split("+"):
                self.faults[kind] += 1

    def on_delivery(self, fut: "asyncio.Future[Any]") -> None:
        if not fut.cancelled() and fut.exception() is not None and len(self.errors) < 10:
            self.errors.append(fut.exception())  # type: ignore[arg-type]

    def summary(self, mode: str, config: SimulationConfig) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        return {
            "mode": mode,
            "records": self.records,
            "topics": dict(sorted(self.topics.items())),
            "faults": dict(sorted(self.faults.items())),
            "seconds": round(seconds, 3),
            "records_per_s": round(self.records / seconds, 1) if seconds > 0 else 0.0,
            "sim_start": iso_ms(config.start_ms),
            "sim_end": iso_ms(config.end_ms) if config.end_ms is not None else None,
            "seed": config.seed,
            "patients": config.n_patients,
        }


def _progress(quiet: bool, total_ms: int | None) -> Any:
    if quiet:
        return None
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns: list[Any] = [TextColumn("[bold]{task.description}")]
    if total_ms is not None:
        columns += [BarColumn(), TaskProgressColumn()]
    columns += [
        TextColumn("{task.fields[records]:,} records"),
        TextColumn("{task.fields[rate]:,.0f} rec/s"),
        TextColumn("sim {task.fields[sim]}"),
        TimeElapsedColumn(),
    ]
    return Progress(*columns, transient=False)


async def _pump(
    records: Iterable[SimRecord],
    producer: Producer | None,
    stats: _Stats,
    *,
    config: SimulationConfig,
    pace: str,  # "none" | "realtime" | "rate"
    rate: float | None = None,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    catchup_until_ms: int | None = None,
    topic_prefix: str = "",
    quiet: bool = True,
    description: str = "simulate",
) -> None:
    """Send records (or only count them when producer is None) with the requested pacing.

    Records arriving at or before catchup_until_ms are a backlog: sent unpaced, and
    `duration` and `rate` count from the first record after it.
    """
    total_ms = config.end_ms - config.start_ms if config.end_ms is not None else None
    progress = _progress(quiet, total_ms)
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task(description, total=total_ms, records=0, rate=0.0, sim="-")
    mono0 = time.perf_counter()
    paced_t0: float | None = None  # when pacing began (end of the backlog)
    paced_n0 = 0

    def expired() -> bool:
        if stop is not None and stop.is_set():
            return True
        return duration is not None and paced_t0 is not None and time.perf_counter() - paced_t0 >= duration

    try:
        for rec in records:
            backlog = pace == "none" or (catchup_until_ms is not None and rec.timestamp_ms <= catchup_until_ms)
            if not backlog and paced_t0 is None:
                paced_t0, paced_n0 = time.perf_counter(), stats.records
            if expired():
                break
            if not backlog:
                assert paced_t0 is not None
                if pace == "realtime":  # due at its arrival time on the wall clock
                    delay = rec.timestamp_ms / 1000.0 - time.time()
                else:  # the i-th paced record is due i / rate seconds after pacing began
                    delay = (stats.records - paced_n0) / float(rate or 1.0) - (time.perf_counter() - paced_t0)
                if delay > 0.002:
                    if duration is not None:
                        delay = min(delay, duration - (time.perf_counter() - paced_t0) + 0.001)
                    await _sleep(delay, stop)
                    if expired():
                        break
            if producer is not None:
                fut = await producer.send(topic_prefix + rec.topic, value=rec.value, key=rec.key,
                                          timestamp_ms=rec.timestamp_ms)
                fut.add_done_callback(stats.on_delivery)
                if stats.errors:
                    raise stats.errors[0]
            stats.add(rec)
            if not backlog or stats.records % PROGRESS_EVERY == 0:
                if progress is not None:
                    _show(progress, task, stats, mono0, rec.timestamp_ms - config.start_ms if total_ms else None,
                          rec.timestamp_ms)
                if backlog:
                    await asyncio.sleep(0)  # let the producer's I/O tasks run
    finally:
        if producer is not None:
            await producer.flush()
        if progress is not None:
            _show(progress, task, stats, mono0, total_ms, stats.last_ms)
            progress.stop()
    if stats.errors:
        raise stats.errors[0]


def _show(progress: Any, task: Any, stats: _Stats, mono0: float, completed: int | None, sim_ms: int | None) -> None:
    sim = datetime.fromtimestamp(sim_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M") if sim_ms else "-"
    progress.update(task, completed=completed, records=stats.records,
                    rate=stats.records / max(time.perf_counter() - mono0, 1e-9), sim=sim)


async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


async def _run(config: SimulationConfig, bootstrap: str | None, producer: Producer | None, dry_run: bool,
               mode: str, **pump: Any) -> dict[str, Any]:
    """Pump the simulation through a producer (ours, started and stopped here, unless one is given)."""
    stats = _Stats()
    owned = producer is None and not dry_run
    if owned:
        producer = await start_kafka_producer(bootstrap or "127.0.0.1:9092")
    try:
        await _pump(iter_records(config), None if dry_run else producer, stats, config=config, **pump)
    finally:
        if owned and producer is not None:
            await producer.stop()
    return stats.summary(mode, config)


async def produce_history(
    config: SimulationConfig,
    bootstrap: str | None,
    *,
    quiet: bool = False,
    producer: Producer | None = None,
    dry_run: bool = False,
    topic_prefix: str = "",
) -> dict[str, Any]:
    """Produce the whole (already backdated) simulation as fast as the broker accepts.

    Use `history_config` to place it. Kafka record timestamps are the arrival times;
    topics are `topic_prefix + record.topic` (settings.topic_prefix namespaces a stack).
    """
    if config.days is None:
        raise ValueError("history needs a bounded config (days)")
    return await _run(config, bootstrap, producer, dry_run, "history", pace="none", topic_prefix=topic_prefix,
                      quiet=quiet, description="history")


async def produce_live(
    config: SimulationConfig,
    bootstrap: str | None,
    *,
    rate: float | None = None,
    duration: float | None = None,
    stop: asyncio.Event | None = None,
    quiet: bool = False,
    producer: Producer | None = None,
    dry_run: bool = False,
    topic_prefix: str = "",
) -> dict[str, Any]:
    """Produce in real time (each record when its arrival time comes) or at `rate` records/s.

    `config` normally starts now (see `live_config`). When it starts in the past, the
    records that have already arrived by now are sent first, unpaced (history, then
    live, from one consistent simulation). Runs until `duration` seconds of paced
    sending have passed, `stop` is set or the simulation ends; cancellation propagates
    (after a flush).
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    return await _run(config, bootstrap, producer, dry_run, "live", pace="rate" if rate else "realtime",
                      rate=rate, duration=duration, stop=stop, catchup_until_ms=int(time.time() * 1000),
                      topic_prefix=topic_prefix, quiet=quiet, description="live")
