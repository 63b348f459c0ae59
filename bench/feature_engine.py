"""Throughput of the feature engine on synthetic vitals.

    python bench/feature_engine.py [--events 200000] [--patients 200] [--profile]
    python bench/feature_engine.py --pure-python [--rounds 4] [--events 200000] [--patients 200]

Each patient sends one vitals record per minute (+-5 s jitter); 2% of records
arrive 1-10 minutes late (out of order, inside the allowed lateness). Reports
events/s and the per-event cost for DictStateStore without and with the JSON
round-trip a changelogged table would add, plus a pure-Python calibration loop
so that figures from different machines can be compared. The garbage collector is tuned as in the worker
(`vitalstream/process.py: tune_gc`).

`--pure-python` instead compares the engine as built (the mypyc-compiled modules, vitalstream/compiled.py)
with a copy of the same sources without the builds (plain Python), in alternating rounds (`--rounds`).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.events import CleanVitals  # noqa: E402
from tables.state import DictStateStore, FeatureEngine, FeatureUpdate  # noqa: E402
from vitalstream.compiled import build_statuses, copy_sources  # noqa: E402
from vitalstream.process import tune_gc  # noqa: E402
from vitalstream.settings import Settings  # noqa: E402

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_events(n_events: int, n_patients: int, ooo: float = 0.02, seed: int = 7) -> list[CleanVitals]:
    """Arrival-ordered vitals: random walks per patient, a fraction delivered late."""
    rng = random.Random(seed)
    state = {f"P{i:05d}": [75.0, 125.0, 78.0, 16.0, 97.0, 37.0] for i in range(n_patients)}
    lo = (35.0, 70.0, 40.0, 6.0, 80.0, 34.5)
    hi = (180.0, 220.0, 130.0, 40.0, 100.0, 41.0)
    sd = (2.0, 2.0, 1.5, 0.5, 0.3, 0.05)
    arrivals: list[tuple[int, int, CleanVitals]] = []
    for k in range(n_events // n_patients):
        for pid, s in state.items():
            for i in range(6):
                s[i] = min(hi[i], max(lo[i], s[i] + rng.gauss(0, sd[i])))
            ts = T0 + k * 60_000 + rng.randint(-5_000, 5_000)
            ev = CleanVitals(
                event_id=f"{pid}-{k}", patient_id=pid, ts_ms=ts, source="monitor",
                heart_rate=float(round(s[0])), bp_systolic=float(round(s[1])), bp_diastolic=float(round(s[2])),
                resp_rate=float(round(s[3])), spo2=float(round(s[4])), temperature=round(s[5], 1),
                consciousness="A" if rng.random() < 0.97 else "V", on_oxygen=rng.random() < 0.1,
            )  # fmt: skip
            delay = rng.randint(60_000, 600_000) if rng.random() < ooo else 0
            arrivals.append((ts + delay, len(arrivals), ev))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [a[2] for a in arrivals]


def out_of_order(events: list[CleanVitals]) -> int:
    latest: dict[str, int] = {}
    n = 0
    for e in events:
        if e.ts_ms < latest.get(e.patient_id, e.ts_ms):
            n += 1
        latest[e.patient_id] = max(latest.get(e.patient_id, e.ts_ms), e.ts_ms)
    return n


def run(events: list[CleanVitals], serialize: bool) -> tuple[float, float, DictStateStore, int]:
    """(wall seconds, cpu seconds, store, updates) for one engine over all events."""
    store = DictStateStore(serialize=serialize)
    process = FeatureEngine(store).process
    updates = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for ev in events:
        if process(ev).__class__ is FeatureUpdate:
            updates += 1
    return time.perf_counter() - w0, time.process_time() - c0, store, updates


def latency_percentiles(events: list[CleanVitals]) -> tuple[float, float, float]:
    process = FeatureEngine(DictStateStore(serialize=False)).process
    clock = time.perf_counter_ns
    lat = []
    for ev in events:
        t0 = clock()
        process(ev)
        lat.append(clock() - t0)
    lat.sort()
    return tuple(lat[int(q * (len(lat) - 1))] / 1e3 for q in (0.5, 0.99, 0.999))  # type: ignore[return-value]


def calibration() -> float:
    """ns per iteration of a trivial Python loop (about 15-40 ns on current desktop CPUs)."""
    t0 = time.perf_counter()
    x = 0
    for i in range(2_000_000):
        x += i
    return (time.perf_counter() - t0) / 2_000_000 * 1e9


def compare_builds(args: argparse.Namespace) -> None:
    """The engine as built (compiled) and as plain Python, in alternating subprocesses: this VM's speed drifts
    by tens of percent within minutes, so one run of each says little. Prints each round and the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        sources = copy_sources(Path(tmp), extra=("bench",))
        builds = (("as built", ROOT, Path(__file__).resolve()), ("plain Python", sources, sources / "bench" / "feature_engine.py"))
        results: dict[str, list[float]] = {label: [] for label, _, _ in builds}
        for k in range(args.rounds):
            for label, root, script in builds:
                out = subprocess.run([sys.executable, str(script), "--events", str(args.events), "--patients",
                                      str(args.patients), "--one-line"], cwd=root, check=True, capture_output=True,
                                     text=True, env={**os.environ, "PYTHONPATH": str(root)}).stdout.split()
                us, calibration_ns, build = float(out[0]), float(out[1]), out[2]
                results[label].append(us)
                print(f"round {k + 1}, {label:12} ({build}): {us:6.1f} us/event  (calibration loop {calibration_ns:.0f} ns)",
                      flush=True)
        a, b = (statistics.median(results[label]) for label, _, _ in builds)
        print(f"median over {args.rounds} rounds: as built {a:.1f} us/event, plain Python {b:.1f} us/event "
              f"({1 - a / b:.0%} less)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="cProfile 50k events and print the top functions")
    ap.add_argument("--pure-python", action="store_true",
                    help="compare the compiled build with the same sources as plain Python, in alternating rounds")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of --pure-python")
    ap.add_argument("--one-line", action="store_true", help=argparse.SUPPRESS)  # a --pure-python round
    args = ap.parse_args()
    if args.pure_python:
        compare_builds(args)
        return
    events = make_events(args.events, args.patients)
    tune_gc(Settings())
    n = len(events)
    statuses = build_statuses()
    if args.one_line:
        _, cpu, _, _ = run(events, False)
        build = "compiled" if set(statuses.values()) == {"compiled"} else "+".join(sorted(set(statuses.values())))
        print(f"{cpu / n * 1e6:.2f} {calibration():.1f} {build.replace(' ', '_')}")
        return
    print(f"modules: {', '.join(f'{m} ({s})' for m, s in statuses.items())}")
    print(f"{n} vitals events, {args.patients} patients, {out_of_order(events)} out of order "
          f"({out_of_order(events) / n:.1%}); calibration loop {calibration():.0f} ns/iter")  # fmt: skip
    for serialize, label in ((False, "engine + DictStateStore        "), (True, "engine + DictStateStore(JSON)  ")):
        wall, cpu, store, updates = run(events, serialize)
        print(
            f"{label}: {n / wall:>8,.0f} events/s  {wall / n * 1e6:5.1f} us/event wall "
            f"({cpu / n * 1e6:5.1f} us cpu), {updates} vectors, "
            f"{store.writes / n:.2f} writes/event, {len(store.data)} keys held"
        )
    p50, p99, p999 = latency_percentiles(events)
    print(f"per-event latency: p50 {p50:.1f} us, p99 {p99:.1f} us, p99.9 {p999:.1f} us")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(events[: min(n, 50_000)], False)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
