"""`vitalstream demo`: the whole flow on the local stack.

1. stack up; 2. a backdated trial history to Kafka; 3. `replay` of that history into the
offline store; 4. `train`: a model registered in MLflow and promoted to production, its
headline metrics against NEWS2; 5. a stream worker, a live simulator and a live view.
The history and the live trial use separate topics and lake prefixes (two cohorts
with the same patient ids must not mix).
"""
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


def train_on_history(args: argparse.Namespace, settings: Settings) -> int:
    """Simulate a backdated history, replay it into the offline store, train and register a model."""
    from datetime import datetime, timedelta, timezone

    from agents.replay import plan_replay, run_replay
    from model.train import train
    from model.training import TrainConfig
    from simulator.config import SimulationConfig
    from simulator.producer import history_config, produce_history
    from streams.topics import ensure_topics

    ensure_topics(settings)
    end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    config = history_config(SimulationConfig(seed=args.seed, n_patients=args.train_patients,
                                             fraction_monitored=args.train_monitored_fraction,
                                             hazard_scale=args.hazard_scale), args.train_days, end=end)
    console.print(f"[bold]2/5 trial history[/]: {args.train_patients} patients, {args.train_days:g} days "
                  f"-> topics {settings.topic_prefix}clinical.*")
    summary = asyncio.run(produce_history(config, settings.kafka_bootstrap, topic_prefix=settings.topic_prefix))
    console.print(f"  {summary['records']:,} records produced in {summary['seconds']:.0f} s")
    console.print("[bold]3/5 replay[/] of the history through the live feature code -> offline store")
    start_ms = int(config.start.timestamp() * 1000)
    report = run_replay(settings, plan_replay(settings, start_ms, int(end.timestamp() * 1000) + 1), workers=2)
    console.print(f"  {report.records:,} records -> {report.rows:,} feature rows in {report.seconds:.1f} s "
                  f"({report.events_per_second:,.0f} records/s)")
    console.print("[bold]4/5 train[/]: PyTorch model, MLflow tracking and registry, promotion gate")
    first = (config.start + timedelta(days=1)).date().isoformat()  # the first day is mostly enrolments
    result = train(settings, start=first, end=end.date().isoformat(), config=TrainConfig(max_epochs=args.max_epochs),
                   log_fn=console.print)
    h = result.headline()
    table = Table(title=f"adverse_event_24h · model version {h['model_version']} · "
                        f"{'PROMOTED to production' if h['promoted'] else 'not promoted'}")
    for col in ("", "test AUROC", "AUPRC", "Brier", "ECE"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("MLP (calibrated)", f"{h['test_auroc']:.3f}", f"{h['test_auprc']:.3f}", f"{h['test_brier']:.3f}",
                  f"{h['test_ece']:.3f}")
    table.add_row("NEWS2", f"{h['news2_test_auroc']:.3f}", "", "", "")
    table.add_row("logistic regression", f"{h['logreg_test_auroc']:.3f}", "", "", "")
    table.caption = (f"margin over NEWS2: {h['margin_over_news2']:+.3f} AUROC · median lead time "
                     f"{h['median_lead_time_h']} h · rows {h['rows']} · data_version {h['data_version']}\n"
                     f"MLflow UI: {settings.mlflow_tracking_uri} · " + "; ".join(h["reasons"]))
    console.print(table)
    return 0


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    console.print("[bold]1/5 local stack[/]")
    try:
        manager.up(settings, log=console.print)
    except StackError as exc:
        console.print(f"[red]✗ {exc}[/]")
        return 1
    exe = [sys.executable, "-m", "vitalstream.cli"]
    settings, env = demo_namespace(settings)
    if args.train_days > 0:
        history_settings = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}history.",
                                                       "lake_uri": f"{settings.lake_uri}-history"})
        if train_on_history(args, history_settings) != 0:
            return 1
    from streams.topics import ensure_topics

    ensure_topics(settings)
    console.print(f"live run: topics {settings.topic_prefix}clinical.*, lake {settings.lake_uri}")
    console.print("[bold]5/5 stream worker[/] (faust -A app worker) and a live simulator")
    worker, worker_log = _spawn("worker", [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"], settings,
                                 env)
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
