"""Stream worker benchmark, on the running local stack (`vitalstream stack up`), in one run.

For each worker count (default 1 and 2, each on fresh topics):

1. the raw aiokafka consume rate of the vitals topic (the ceiling);
2. sustained events/s through `faust -A app worker` processes with every sink on (bronze, silver, features
   in RocksDB tables, Redis, offline Parquet) over a backlog of N vitals events, and the workers' CPU time
   per event;
3. p50/p99 arrival-to-Redis latency at fixed offered rates (default 500, 1,000 and 2,000 events/s), from
   the workers' `vitalstream_feature_update_latency_seconds` histograms; with each, the processes that used
   the most CPU while the load was offered (in cores) and Redis's server time per vector written (its
   `INFO commandstats`: the online store's script, and the HSET inside it).

Baselines, each run first on its own fresh topics, then the worker as configured:
- `--fetch-baseline`: Faust's own fetch settings (1,500 ms max wait, 1 byte minimum) instead of the worker's
  (`VITALSTREAM_FETCH_MAX_WAIT_MS`, `VITALSTREAM_FETCH_MIN_BYTES`);
- `--faust-baseline`: Faust's per-record delivery and per-key table writes instead of the worker's inline
  delivery and batched changelog writes (`VITALSTREAM_FAUST_PER_RECORD_PATHS`);
- `--waits-baseline MS`: the deliberate waits (fetch max wait, micro-batch, merge grace, Redis interval) at
  MS milliseconds each instead of the configured ones;
- `--against REV`: the worker of git revision REV (exported to a temporary folder), with the same settings.

    python bench/stream_throughput.py [--events 100000] [--patients 1000] [--rates 500,1000,2000]
                                      [--seconds 20] [--workers 1,2] [--lake s3|file] [--fetch-baseline]
                                      [--faust-baseline] [--waits-baseline 50] [--against REV]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams import topics  # noqa: E402
from streams.timestamps import iso_ms  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402
from tests.harness import REPO, WorkerProcess, another_worker, isolated_settings, scrape_metrics, wait_for  # noqa: E402
from vitalstream.settings import Settings  # noqa: E402


def vitals_payloads(n: int, patients: int, start_ms: int, seed: int = 1) -> list[tuple[bytes, bytes, int]]:
    """n monitor readings, one per patient per minute, in time order: (key, value, timestamp_ms)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = i % patients
        ts = start_ms + (i // patients) * 60_000 + p * 7
        pid = f"PT{p + 1:05d}"
        rec = {"event_id": str(uuid.UUID(int=int(rng.integers(1 << 62)) << 64 | i, version=4)), "patient_id": pid,
               "timestamp": iso_ms(ts), "source": "monitor",
               "heart_rate": round(float(rng.normal(80, 8)), 1), "bp_systolic": round(float(rng.normal(122, 10)), 1),
               "bp_diastolic": round(float(rng.normal(78, 6)), 1), "resp_rate": round(float(rng.normal(16, 2)), 1),
               "spo2": round(float(min(100, rng.normal(97, 1.2))), 1),
               "temperature": round(float(rng.normal(37.0, 0.3)), 2), "temperature_unit": "C",
               "consciousness": "A", "on_oxygen": False}
        out.append((pid.encode(), orjson.dumps(rec), ts))
    return out


async def produce_all(settings: Settings, payloads, rate: float | None = None) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks=1,
                                max_batch_size=256 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = []
        for i, (key, value, ts) in enumerate(payloads):
            if rate:
                # The load generator shares the machine with the worker: wake up at most every 2 ms (sending
                # what is due) rather than per event, and restamp the payload's fixed-width timestamp in place.
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0.002:
                    await asyncio.sleep(delay)
                old_ts = iso_ms(ts).encode()
                ts = int(time.time() * 1000)  # live: measured now, received now
                value = value.replace(old_ts, iso_ms(ts).encode(), 1)
            futures.append(await producer.send(topics.kafka_name(settings, topics.VITALS), value, key=key,
                                               timestamp_ms=ts))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def raw_consume_rate(settings: Settings, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topics.kafka_name(settings, topics.VITALS), bootstrap_servers=settings.kafka_bootstrap,
                                group_id=f"bench-raw-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
                                enable_auto_commit=False, max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        seen, t0 = 0, None
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for msgs in batch.values():
                for m in msgs:
                    orjson.loads(m.value)  # a consumer that does nothing at all is not a meaningful ceiling
                if t0 is None and msgs:
                    t0 = time.perf_counter()
                seen += len(msgs)
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def quantile_from_histogram(metrics: dict[str, float], base: str, q: float) -> float:
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in metrics.items()
                     if k.startswith(base + "_bucket") and 'le="+Inf"' not in k)
    total = metrics.get(base + "_count", 0)
    if not total:
        return float("nan")
    target, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= target:  # linear interpolation inside the bucket, as Prometheus' histogram_quantile
            return prev_le + (le - prev_le) * (target - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return float("inf")


def _ms(value: float) -> str:
    """A latency quantile for the report; past the histogram's last bucket (30 s) only a bound is known."""
    return f"{value:7.1f}" if value != float("inf") else "  > 30 s"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process() -> dict[tuple[int, str], float]:
    """CPU seconds so far of every process on the machine, by (pid, name)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[(int(entry.name), (entry / "comm").read_text().strip())] = cpu_seconds(int(entry.name))
            except (OSError, ValueError, IndexError):  # gone meanwhile
                pass
    return out


def busiest(before: dict, after: dict, seconds: float, names: dict[int, str], n: int = 5) -> str:
    """The n processes that used the most CPU between two `cpu_by_process` snapshots, in cores."""
    usage = sorted(((after[k] - before.get(k, 0.0)) / seconds, k) for k in after)[::-1][:n]
    return ", ".join(f"{names.get(pid, name)} {cores:.2f}" for cores, (pid, name) in usage if cores >= 0.01)


def redis_script_usec(settings: Settings) -> tuple[float, float]:
    """Redis's server time so far in the online store's script (EVAL, or EVALSHA before 2026-11-27) and in HSET,
    in microseconds."""
    import redis

    stats = redis.Redis.from_url(settings.redis_url).info("commandstats")
    return (sum(float(stats.get(f"cmdstat_{name}", {}).get("usec", 0)) for name in ("eval", "evalsha")),
            float(stats.get("cmdstat_hset", {}).get("usec", 0)))


def drain_backlog(settings: Settings, workers: list[WorkerProcess], events: int) -> tuple[float, float, float]:
    """Wait until the workers consumed `events`; (events/s, worker CPU us/event, cores busy) from the first
    record on, so start-up is not counted."""
    key = f'vitalstream_events_in_total{{topic="{topics.VITALS}"}}'

    def consumed() -> float:
        return sum(scrape_metrics(w.settings).get(key, 0.0) for w in workers)

    def cpu() -> float:
        return sum(cpu_seconds(w.proc.pid) for w in workers)

    t_first = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        n, now = consumed(), time.perf_counter()
        if n > 0 and t_first is None:
            t_first, n_first, cpu_first = now, n, cpu()
        if n >= events:
            seconds, cpu_used = now - t_first, cpu() - cpu_first
            return (events - n_first) / seconds, cpu_used / (events - n_first) * 1e6, cpu_used / seconds
        time.sleep(0.2)
    raise TimeoutError("the workers did not finish the backlog in time")


def wait_redis_quiet(settings: Settings, workers: list[WorkerProcess]) -> None:
    """Let the backlog's last coalesced Redis writes land, so they are not counted as live latency."""
    count_key = "vitalstream_feature_update_latency_seconds_count"
    last, stable_since = -1.0, time.monotonic()
    while time.monotonic() - stable_since < 3 * settings.online_flush_backlog_ms / 1000:
        now_count = sum(scrape_metrics(w.settings).get(count_key, 0.0) for w in workers)
        if now_count != last:
            last, stable_since = now_count, time.monotonic()
        time.sleep(0.5)


def live_latency(settings: Settings, workers: list[WorkerProcess], rate: float, seconds: float,
                 patients: int) -> tuple[float, float, int, str]:
    """p50 and p99 arrival-to-Redis latency (ms) at a fixed offered rate, from the workers' histograms; and
    what the machine did meanwhile (the busiest processes while the load was offered, Redis's server time per
    vector written)."""
    base_name = "vitalstream_feature_update_latency_seconds"
    written_key = 'vitalstream_events_out_total{sink="redis"}'

    def histogram() -> dict[str, float]:
        total: dict[str, float] = {}
        for w in workers:
            for k, v in scrape_metrics(w.settings).items():
                if k.startswith(base_name) or k == written_key:
                    total[k] = total.get(k, 0.0) + v
        return total

    before = histogram()
    live = vitals_payloads(int(rate * seconds), patients, int(time.time() * 1000), seed=int(rate))
    names = {w.proc.pid: "worker" for w in workers} | {os.getpid(): "load generator"}
    cpu_before, redis_before, t0 = cpu_by_process(), redis_script_usec(settings), time.perf_counter()
    asyncio.run(produce_all(settings, live, rate=rate))
    cpu_after, t1 = cpu_by_process(), time.perf_counter()
    count = base_name + "_count"
    wait_until = time.monotonic() + 60  # every produced event's latency observed (after its Redis write)
    while histogram().get(count, 0.0) - before.get(count, 0.0) < len(live) and time.monotonic() < wait_until:
        time.sleep(0.2)
    after = histogram()
    diff = {k: after[k] - before.get(k, 0.0) for k in after}
    p50, p99 = (quantile_from_histogram(diff, base_name, q) * 1000 for q in (0.5, 0.99))
    script, hset = (b - a for a, b in zip(redis_before, redis_script_usec(settings)))
    written = max(diff.get(written_key, 0.0), 1.0)
    machine = (f"cores while offered: {busiest(cpu_before, cpu_after, t1 - t0, names)}; Redis {script / written:.0f} us "
               f"per vector written (HSET {hset / written:.0f})")
    return p50, p99, int(diff.get(count, 0)), machine


def export_revision(rev: str, tmp: Path) -> Path:
    """The repository's files at git revision `rev`, in a folder of their own (not a worktree: nothing to
    clean up in the repository), with its compiled modules built, if it has any (setup.py), as an install
    would: else that worker would run them as plain Python, and the comparison would be unfair to it."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    folder = tmp / f"rev-{sha}"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    if (folder / "setup.py").exists():
        print(f"building {sha}'s compiled modules ...", flush=True)
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
    return folder


def empty_redis_db(settings: Settings) -> None:
    """Empty a run's own Redis database (1-15, tests/harness.py). Vectors an earlier run left there with later
    event times would turn this run's writes into skipped ones, which cost Redis almost nothing."""
    import redis

    if settings.redis_url.rstrip("/").rsplit("/", 1)[-1] in ("", "0"):
        raise ValueError(f"not a run's own Redis database: {settings.redis_url}")
    redis.Redis.from_url(settings.redis_url).flushdb()


def new_run(base: Settings, tmp: Path, args: argparse.Namespace, overrides: dict | None = None) -> tuple[Settings, Path]:
    """A run's own settings and folder: fresh topics (created), its own Redis database (emptied), its lake (the
    stack's S3 server, or a local folder with `--lake file`)."""
    unique = uuid.uuid4().hex[:8]
    folder = tmp / unique
    folder.mkdir(parents=True)
    settings = isolated_settings(base, unique, folder, partitions=args.partitions).model_copy(update=overrides or {})
    if args.lake == "file":
        settings = settings.model_copy(update={"lake_uri": f"file://{folder}/lake"})
    ensure_topics(settings)
    empty_redis_db(settings)
    return settings, folder


def end_run(settings: Settings, workers: list[WorkerProcess]) -> None:
    """Stop a run's workers and delete its topics."""
    for w in workers:
        w.stop()
    try:
        asyncio.run(delete_run_topics(settings))
    except Exception as exc:  # a leftover run is a nuisance, not a reason to hide the run's own error
        print(f"(could not delete this run's topics: {exc!r})", file=sys.stderr)


def wait_ready(worker: WorkerProcess) -> None:
    """Faust logs "Worker]: Ready" once, and not at all for a worker whose first assignment a rebalance cut short;
    every completed recovery logs "Worker ready"."""
    wait_for(lambda: "Worker ready" in worker.log_text() or worker.proc.poll() is not None, 120,
             "the worker to be ready")
    assert worker.proc.poll() is None, worker.log_text()[-3000:]


def measure(base: Settings, tmp: Path, args: argparse.Namespace, n_workers: int, label: str = "",
            overrides: dict | None = None, code_dir: Path = REPO) -> None:
    """One configuration on fresh topics: ceiling, backlog rate, CPU, then latency at each offered rate."""
    settings, folder = new_run(base, tmp, args, overrides)
    workers: list[WorkerProcess] = []
    try:
        start_ms = int(time.time() * 1000) - (args.events // args.patients + 1) * 60_000
        payloads = vitals_payloads(args.events, args.patients, start_ms)
        secs = asyncio.run(produce_all(settings, payloads))
        raw = asyncio.run(raw_consume_rate(settings, args.events))
        print(f"\n## {n_workers} worker{'s' if n_workers > 1 else ''}{label}")
        print(f"produce (aiokafka, acks=1):            {args.events / secs:>10,.0f} events/s")
        print(f"raw aiokafka consume + json parse:     {raw:>10,.0f} events/s   (ceiling)")
        for i in range(n_workers):
            s = settings if i == 0 else another_worker(settings, folder / f"worker-data-{i}")
            workers.append(WorkerProcess(s, folder / f"worker{i}.log", code_dir).start())
        for w in workers:
            wait_ready(w)
        rate, cpu_us, cores = drain_backlog(settings, workers, args.events)
        print(f"workers, every sink on (backlog):      {rate:>10,.0f} events/s   ({rate / raw:.1%} of the ceiling)")
        print(f"worker CPU (all processes, threads):   {cpu_us:>10,.0f} us/event   ({cores:.2f} cores busy)")
        wait_redis_quiet(settings, workers)
        for offered in args.rates:
            p50, p99, n, machine = live_latency(settings, workers, offered, args.seconds, args.patients)
            print(f"arrival->Redis latency at {offered:>5,.0f}/s:  p50 {_ms(p50)} ms   p99 {_ms(p99)} ms   ({n:,} events)")
            print(f"    {machine}")
    finally:
        end_run(settings, workers)


@contextlib.asynccontextmanager
async def kafka_admin(settings: Settings) -> AsyncIterator[Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def broker_topics(settings: Settings) -> list[str]:
    async with kafka_admin(settings) as admin:
        return list(await admin.list_topics())


async def delete_run_topics(settings: Settings) -> None:
    """Delete one configuration's topics (its prefix, and its Faust app's internal topics). Left behind, each
    run's ~40 partitions add to the broker's background work and to later runs' figures: a broker holding
    ~3,600 partition directories left by earlier sessions used ~0.5 cores at 2,000 events/s."""
    if not settings.topic_prefix.strip(".") or not settings.app_id:  # every topic would match
        raise ValueError("only a run with its own topic prefix and app id deletes its topics")
    async with kafka_admin(settings) as admin:
        names = [t for t in await admin.list_topics()
                 if t.startswith((settings.topic_prefix, f"{settings.app_id}-")) and not t.startswith("__")]
        if names:
            await admin.delete_topics(names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--patients", type=int, default=1_000)
    ap.add_argument("--rates", type=lambda text: [float(x) for x in text.split(",")], default=[500.0, 1000.0, 2000.0],
                    help="offered rates for the latency runs, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each latency run")
    ap.add_argument("--workers", type=lambda text: [int(x) for x in text.split(",")], default=[1, 2],
                    help="worker counts to compare, comma-separated (each on fresh topics)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--lake", choices=["s3", "file"], default="s3", help="the stack's S3 server or a local folder")
    ap.add_argument("--fetch-baseline", action="store_true",
                    help="also run each worker count with Faust's fetch settings (1,500 ms max wait, 1 byte)")
    ap.add_argument("--faust-baseline", action="store_true",
                    help="also run each worker count with Faust's per-record delivery and per-key table writes")
    ap.add_argument("--waits-baseline", type=int, metavar="MS",
                    help="also run each worker count with every deliberate wait at MS milliseconds")
    ap.add_argument("--against", metavar="REV",
                    help="also run each worker count with the worker of git revision REV (e.g. a commit or tag)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vs-bench-"))
    base = Settings()
    load = os.getloadavg()[0]
    print(f"# stream_throughput {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} "
          f"cores, python {platform.python_version()}, load {load:.1f}, "
          f"{len(asyncio.run(broker_topics(base)))} topics on the broker")
    print(f"backlog: {args.events:,} vitals events, {args.patients:,} patients, {args.partitions} partitions, "
          f"lake {args.lake}; latency runs of {args.seconds:.0f} s")
    baselines: list[tuple[str, dict, Path]] = []
    if args.fetch_baseline:
        baselines.append((", Faust's fetch settings (1,500 ms max wait, 1 byte min)",
                          {"fetch_max_wait_ms": 1500, "fetch_min_bytes": 1}, REPO))
    if args.faust_baseline:
        baselines.append((", Faust's per-record delivery and per-key table writes",
                          {"faust_per_record_paths": True}, REPO))
    if args.waits_baseline is not None:
        ms = args.waits_baseline
        baselines.append((f", waits of {ms} ms", {"fetch_max_wait_ms": ms, "batch_max_seconds": ms / 1000,
                                                  "merge_grace_ms": ms, "online_flush_ms": ms}, REPO))
    if args.against:
        baselines.append((f", the worker of {args.against}", {}, export_revision(args.against, tmp)))
    label = ""
    if baselines:
        label = (f", as configured (fetch {base.fetch_max_wait_ms} ms max wait, {base.fetch_min_bytes:,} bytes min; "
                 f"merge grace {base.merge_grace_ms} ms, Redis interval {base.online_flush_ms} ms; "
                 f"delivery into the inbox, batched changelog)")
    for n_workers in args.workers:
        for baseline_label, overrides, code_dir in baselines:
            measure(base, tmp, args, n_workers, baseline_label, overrides, code_dir)
        measure(base, tmp, args, n_workers, label)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
