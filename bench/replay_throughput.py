"""Replay vs live worker, on the running local stack (`vitalstream stack up`), in one run.

A simulated trial history (every clinical topic) is produced to fresh topics; then
1. one live `faust -A app worker` (every sink on) works through it as a backlog: events/s;
2. `vitalstream replay` over the same topics and days, with 1 and with --workers 2: events/s
   (the replay reads Kafka, runs the same validation and feature code, writes the offline store).

    python bench/replay_throughput.py [--patients 60] [--days 5] [--monitored 0.3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.replay import plan_replay, run_replay  # noqa: E402
from bench.stream_throughput import scrape  # noqa: E402
from simulator.config import SimulationConfig  # noqa: E402
from simulator.model import iter_records  # noqa: E402
from streams import topics  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402
from tests.harness import WorkerProcess, isolated_settings, produce  # noqa: E402
from vitalstream.settings import Settings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=60)
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--monitored", type=float, default=0.3, help="share of patients with a 60 s monitor")
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vs-bench-"))
    settings = isolated_settings(Settings(), uuid.uuid4().hex[:8], tmp, partitions=args.partitions)
    ensure_topics(settings)
    start = (datetime.now(timezone.utc) - timedelta(days=args.days + 1)).replace(minute=0, second=0, microsecond=0)
    cfg = SimulationConfig(seed=3, n_patients=args.patients, start=start, days=args.days,
                           fraction_monitored=args.monitored)
    items = [(r.topic, r.key, r.value, r.timestamp_ms) for r in iter_records(cfg)]
    print(f"# replay_throughput {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    print(f"history: {len(items):,} records ({args.patients} patients, {args.days:g} days, "
          f"{args.monitored:.0%} monitored), {args.partitions} partitions, lake {settings.lake_uri.split(':')[0]}")
    produce(settings, items)

    worker = WorkerProcess(settings, tmp / "worker.log").start()
    try:
        worker.wait_ready(120)
        keys = [f'vitalstream_events_in_total{{topic="{t}"}}' for t in topics.CLINICAL_TOPICS]
        t_first = n_first = t_last = None
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            n = sum(scrape(settings).get(k, 0) for k in keys)
            now = time.perf_counter()
            if n > 0 and t_first is None:
                t_first, n_first = now, n
            if n >= len(items):
                t_last = now
                break
            time.sleep(0.2)
        if t_last is None:
            print("the live worker did not finish the history in time")
            return 1
    finally:
        worker.stop()
    live = (len(items) - n_first) / (t_last - t_first)
    print(f"live worker (every sink on):        {live:>9,.0f} events/s")

    from_ms = int(start.timestamp() * 1000)
    to_ms = int((start + timedelta(days=args.days)).timestamp() * 1000)
    for workers in (1, 2):
        report = run_replay(settings, plan_replay(settings, from_ms, to_ms), workers=workers, progress=False)
        print(f"replay --workers {workers} (offline store):  {report.events_per_second:>9,.0f} events/s   "
              f"{report.events_per_second / live:4.1f}x live   ({report.records:,} records, {report.rows:,} rows, "
              f"{report.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
