"""`vitalstream demo`: the local stack, a stream worker, a live simulator and a live view."""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams import topics
from vitalstream.settings import Settings
from vitalstream.stack import manager
from vitalstream.stack.process import StackError, stop_pid

console = Console()


def _spawn(name: str, cmd: list[str], settings: Settings, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = settings.stack_dir.resolve() / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env}), log


def demo_namespace(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """Each demo run gets its own topics, consumer group and lake prefix.

    A second run re-simulates the same patient ids over the same hours; mixed into the
    first run's history, its records would be late or duplicates of the first run's.
    """
    run = f"demo{int(time.time())}"
    lake_uri = f"{settings.lake_uri.rstrip('/')}/{run}"
    env = {"VITALSTREAM_TOPIC_PREFIX": f"{run}.", "VITALSTREAM_APP_ID": f"vitalstream-{run}",
           "VITALSTREAM_LAKE_URI": lake_uri, "VITALSTREAM_WORKER_DATA_DIR": str(settings.stack_dir / run)}
    return settings.model_copy(update={"topic_prefix": f"{run}.", "app_id": f"vitalstream-{run}",
                                       "lake_uri": lake_uri}), env


async def _offsets(settings: Settings) -> tuple[dict[str, int], dict[str, int]]:
    """End offsets per topic, and the worker group's committed offsets per topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    await admin.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()  # the consumer's own view is per subscription
        names = {topics.kafka_name(settings, t): t for t in topics.ALL_TOPICS}
        tps = [TopicPartition(k, p) for k in names for p in (metadata.partitions_for_topic(k) or [])]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(settings.app_id)
    finally:
        await consumer.stop()
        await admin.close()
    end_by_topic: dict[str, int] = {}
    for tp, off in ends.items():
        end_by_topic[names[tp.topic]] = end_by_topic.get(names[tp.topic], 0) + off
    done_by_topic: dict[str, int] = {}
    for tp, meta in committed.items():
        if tp.topic in names:
            done_by_topic[names[tp.topic]] = done_by_topic.get(names[tp.topic], 0) + max(meta.offset, 0)
    return end_by_topic, done_by_topic


def _patients_online(settings: Settings) -> int:
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match="patient:*:features", count=1000))
    finally:
        client.close()


def _view(rows: dict[str, tuple[int, float, int]], patients: int, elapsed: float, logs: dict[str, Path],
          settings: Settings) -> Table:
    table = Table(title=f"VitalStream demo: {elapsed:,.0f} s  ·  patients with a live feature vector in Redis: {patients}")
    table.add_column("topic")
    table.add_column("records", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("worker lag", justify="right")
    for topic, (total, rate, lag) in rows.items():
        table.add_row(topic, f"{total:,}", f"{rate:,.1f}", f"{lag:,}" if lag >= 0 else "-")
    table.caption = (f"worker log {logs['worker']}  ·  simulator log {logs['simulator']}\n"
                     f"metrics http://{settings.host}:{settings.metrics_port}/metrics  ·  lake {settings.lake_uri}  ·  "
                     f"Redis {settings.redis_url} (HGETALL patient:PT00001:features)  ·  Ctrl-C to stop")
    return table


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    console.print("[bold]1/3 local stack[/]")
    try:
        manager.up(settings, log=console.print)
    except StackError as exc:
        console.print(f"[red]✗ {exc}[/]")
        return 1
    exe = [sys.executable, "-m", "vitalstream.cli"]
    settings, env = demo_namespace(settings)
    from streams.topics import ensure_topics

    ensure_topics(settings)
    console.print(f"demo run: topics {settings.topic_prefix}clinical.*, lake {settings.lake_uri}")
    console.print("[bold]2/3 stream worker[/] (faust -A app worker)")
    worker, worker_log = _spawn("worker", [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"], settings,
                                 env)
    console.print("[bold]3/3 simulator[/] (live)")
    # A day of backdated history first (so there is something to see at once), then real time.
    sim_cmd = [*exe, "simulate", "--live", "--days", str(args.history_days), "--patients", str(args.patients),
               "--seed", str(args.seed), "--quiet"]
    if args.rate:
        sim_cmd += ["--rate", str(args.rate)]
    simulator, sim_log = _spawn("simulator", sim_cmd, settings, env)
    logs = {"worker": worker_log, "simulator": sim_log}
    started = time.monotonic()
    last: dict[str, int] = {}
    last_t = started
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while args.duration is None or time.monotonic() - started < args.duration:
                for name, proc in (("worker", worker), ("simulator", simulator)):
                    if proc.poll() is not None:
                        console.print(f"[red]{name} exited with code {proc.returncode}; log: {logs[name]}[/]")
                        return 1
                ends, done = asyncio.run(_offsets(settings))
                now = time.monotonic()
                rows = {t: (ends.get(t, 0), (ends.get(t, 0) - last.get(t, ends.get(t, 0))) / max(now - last_t, 1e-9),
                            ends.get(t, 0) - done[t] if t in done else -1) for t in topics.ALL_TOPICS}
                last, last_t = ends, now
                live.update(_view(rows, _patients_online(settings), now - started, logs, settings))
                time.sleep(2)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (simulator, worker):
            if proc.poll() is None:
                stop_pid(proc.pid, timeout_s=20)
    console.print("Demo stopped. The stack is still up: `vitalstream stack down` stops it.")
    return 0
