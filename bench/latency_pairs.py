"""Alternating live-latency runs of two workers: p50/p99 arrival-to-Redis latency at one offered rate.

A p99 from one 20 s run moves by ~100 ms between runs of the same code on the dev VM, so a single side-by-side
pair (bench/stream_throughput.py) says little about the tail. This script alternates short runs of A and B
(A, B, A, B, ...), each on fresh topics with a fresh worker: a warm-up at the rate, then the measured run.

    python bench/latency_pairs.py --set gil_switch_interval_ms=5        # B: this checkout, a setting changed
    python bench/latency_pairs.py --against 661a665                     # B: the worker of a git revision
    python bench/latency_pairs.py --backlog 150000 --set ...            # backlog rate instead of latency

A is this checkout with the current settings. Lake: the stack's S3 server (`--lake file` for a local folder).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pydantic import TypeAdapter  # noqa: E402
from stream_throughput import (REPO, end_run, export_revision, live_latency, new_run, produce_all,  # noqa: E402
                               scrape_metrics, vitals_payloads, wait_ready, wait_redis_quiet)
from streams import topics  # noqa: E402
from tests.harness import WorkerProcess, wait_for  # noqa: E402
from vitalstream.settings import Settings  # noqa: E402


def one_run(base: Settings, tmp: Path, args: argparse.Namespace, overrides: dict, code_dir: Path) -> str:
    """A worker on fresh topics: its backlog rate, or its latency at the rate after a warm-up."""
    settings, folder = new_run(base, tmp, args, overrides)
    workers: list[WorkerProcess] = []
    try:
        now_ms = int(time.time() * 1000)
        if args.backlog:  # one reading per patient per minute, ending now (as bench/stream_throughput.py does)
            start_ms = now_ms - (args.backlog // args.patients + 1) * 60_000
            asyncio.run(produce_all(settings, vitals_payloads(args.backlog, args.patients, start_ms)))
        worker = WorkerProcess(settings, folder / "worker.log", code_dir).start()
        workers.append(worker)
        wait_ready(worker)
        if args.backlog:
            key = f'vitalstream_events_in_total{{topic="{topics.VITALS}"}}'
            consumed = lambda: scrape_metrics(settings).get(key, 0.0)  # noqa: E731
            wait_for(lambda: consumed() > 0, 120, "the first records")
            n0, t0 = consumed(), time.perf_counter()
            wait_for(lambda: consumed() >= args.backlog, 1800, "the backlog")
            return f"backlog {(args.backlog - n0) / (time.perf_counter() - t0):,.0f} events/s"
        asyncio.run(produce_all(settings, vitals_payloads(int(args.rate * args.warmup), args.patients, now_ms,
                                                          seed=99), rate=args.rate))
        wait_redis_quiet(settings, [worker])  # the warm-up's records are not counted
        p50, p99, n, machine = live_latency(settings, [worker], args.rate, args.seconds, args.patients)
        return f"p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   ({n:,} events; {machine.split(';')[0]})"
    finally:
        end_run(settings, workers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="B runs the worker of git revision REV")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="B runs with this setting changed (a Settings field; repeatable)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each measured run")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds at the rate before each measured run")
    ap.add_argument("--backlog", type=int, default=0, help="measure the rate draining this many events instead")
    ap.add_argument("--patients", type=int, default=1_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--lake", choices=["s3", "file"], default="s3")
    args = ap.parse_args()
    if not args.against and not args.set:
        ap.error("say what B is: --against REV and/or --set FIELD=VALUE")
    if not 1 <= args.pairs <= 7:  # each run takes one of Redis's databases 1-15 (tests/harness.py)
        ap.error("--pairs: 1 to 7")
    base = Settings()
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or field not in Settings.model_fields:
            ap.error(f"--set {item!r}: expected FIELD=VALUE with a field of Settings")
        overrides[field] = TypeAdapter(Settings.model_fields[field].annotation).validate_python(value)
    tmp = Path(tempfile.mkdtemp(prefix="vs-pairs-"))
    code_b = export_revision(args.against, tmp) if args.against else REPO
    label_b = " ".join(filter(None, [f"worker of {args.against}" if args.against else "", *args.set]))
    what = f"backlog of {args.backlog:,} events" if args.backlog else \
        f"{args.rate:,.0f} events/s, {args.seconds:.0f} s after a {args.warmup:.0f} s warm-up"
    print(f"# latency_pairs {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: {what}, 1 worker, lake {args.lake}; "
          f"A: as configured, B: {label_b}", flush=True)
    for i in range(args.pairs):
        for name, overrides_, code_dir in (("A", {}, REPO), ("B", overrides, code_b)):
            print(f"pair {i + 1} {name}: {one_run(base, tmp, args, overrides_, code_dir)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
