"""The `vitalstream` command line."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from rich.console import Console

from vitalstream.settings import Settings, get_settings

console = Console(stderr=True, highlight=False)


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from vitalstream.stack import manager
    from vitalstream.stack.process import StackError

    if args.action == "up":
        console.print(f"[bold]Bringing the local stack up[/] (data and logs in {settings.stack_dir.resolve()})")
        try:
            manager.up(settings, log=console.print)
        except StackError as exc:
            console.print(f"[red]✗ {exc}[/]")
            return 1
        console.print("[bold green]Stack is up.[/] `vitalstream stack status` to check, `vitalstream stack down` to stop.")
        return 0
    if args.action == "down":
        stopped = manager.down(settings, log=console.print)
        console.print("stack down" + ("" if stopped else " (nothing of ours was running)"))
        return 0
    if args.action == "status":
        statuses = manager.status(settings)
        if args.json:
            print(json.dumps(manager.as_json(statuses), indent=2))
        else:
            for st in statuses.values():
                mark = "[green]healthy[/]" if st.healthy else "[red]down[/]"
                who = f"pid {st.pid}" if st.managed else ("external" if st.healthy else "-")
                console.print(f"  {st.name:<9} {mark:<22} {st.url:<42} {who}")
        return 0 if all(st.healthy for st in statuses.values()) else 1
    if args.action == "logs":
        logs = settings.stack_dir / "logs"
        names = [args.service] if args.service else sorted(p.stem for p in logs.glob("*.log"))
        paths = [logs / f"{n}.log" for n in names]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            console.print(f"[red]no log at {', '.join(missing)}[/]")
            return 1
        cmd = ["tail", "-n", str(args.lines), *(["-F"] if args.follow else []), *map(str, paths)]
        return subprocess.call(cmd)
    raise AssertionError(args.action)


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.topics import ensure_topics

    for topic, state in ensure_topics(settings).items():
        console.print(f"  {topic:<26} {state}")
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from simulator import cli as sim_cli

    return sim_cli.run(args, settings)


def _lake(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

    from sinks.lake import RETENTION_DAYS, Lake, cleanup

    lake = Lake.from_settings(settings)
    deleted = cleanup(lake, today=date.fromisoformat(args.today) if args.today else None, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for prefix, n in deleted.items():
        console.print(f"  {prefix:<11} {verb} {n} objects older than {RETENTION_DAYS[prefix]} days")
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from agents.replay import ReplayError, parse_time, plan_replay, run_replay
    from sinks.lake import utc_day

    patients = [p for chunk in (args.patients or []) for p in chunk.split(",") if p]
    try:
        plan = plan_replay(settings, parse_time(args.from_), parse_time(args.to), patients=patients or None)
        days = plan.days
        console.print(f"replaying {plan.total_records:,} records for {len(days)} day(s) {days[0]} .. {days[-1]} "
                      f"(state warmed up from {utc_day(plan.warmup_from_ms)}), "
                      f"target {args.target}, {args.workers} worker(s)")
        report = run_replay(settings, plan, target=args.target, workers=args.workers, progress=not args.quiet)
    except ReplayError as exc:
        console.print(f"[red]✗ {exc}[/]")
        return 1
    summary = {
        "plan_id": plan.plan_id, "records": report.records, "rows": report.rows,
        "events_per_second": round(report.events_per_second), "seconds": round(report.seconds, 2),
        "days": report.committed_days, "superseded_objects": report.superseded_objects,
        "online_written": report.online_written, "rejected": dict(report.rejected),
    }
    print(json.dumps(summary))
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from model.dataset import DatasetError
    from model.train import train
    from model.training import TrainConfig
    from model.tracking import PromotionConflictError, TrackingUnavailableError

    config = TrainConfig(max_epochs=args.max_epochs, patience=args.patience, seed=args.seed,
                         batch_rows=args.batch_rows, hidden=tuple(args.hidden))
    try:
        report = train(settings, start=args.from_, end=args.to, split=args.split, config=config,
                       min_grade=args.min_grade, register=not args.no_register, min_improvement=args.gate,
                       progress=not args.quiet, log_fn=console.print)
    except (DatasetError, TrackingUnavailableError, PromotionConflictError, ValueError) as exc:
        console.print(f"[red]✗ {exc}[/]")
        return 1
    print(json.dumps(report.headline()))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from vitalstream.demo import run_demo

    return run_demo(args, settings)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    # Same as `faust -A app worker`; kept here so one entry point runs everything.
    os.execvp(sys.executable, [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", args.loglevel])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitalstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="run the local stack (Kafka, Redis, PostgreSQL, S3, MLflow)")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    stack_sub.add_parser("up", help="start every service and wait until healthy (idempotent)")
    stack_sub.add_parser("down", help="stop the services this stack started")
    st = stack_sub.add_parser("status", help="health of each service")
    st.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    lg = stack_sub.add_parser("logs", help="show service logs")
    lg.add_argument("service", nargs="?", choices=["kafka", "redis", "postgres", "s3", "mlflow", "worker", "simulator"])
    lg.add_argument("-n", "--lines", type=int, default=50)
    lg.add_argument("-f", "--follow", action="store_true")
    stack.set_defaults(func=_stack)

    topics = sub.add_parser("topics", help="create the topics (idempotent)")
    topics.set_defaults(func=_topics)

    sim = sub.add_parser("simulate", help="generate a clinical-trial cohort and produce it to Kafka")
    from simulator import cli as sim_cli

    sim_cli.add_arguments(sim)
    sim.set_defaults(func=_simulate)

    lake = sub.add_parser("lake", help="lake maintenance")
    lake_sub = lake.add_subparsers(dest="action", required=True)
    clean = lake_sub.add_parser("cleanup", help="delete raw/ older than 90 days and processed/ older than 2 years")
    clean.add_argument("--dry-run", action="store_true")
    clean.add_argument("--today", help="YYYY-MM-DD to measure retention from (default: today, UTC)")
    lake.set_defaults(func=_lake)

    worker = sub.add_parser("worker", help="run a stream worker (same as `faust -A app worker`)")
    worker.add_argument("-l", "--loglevel", default="info")
    worker.set_defaults(func=_worker)

    rp = sub.add_parser("replay", help="recompute features from Kafka history (offline store and/or Redis)")
    rp.add_argument("--from", dest="from_", required=True, help="start: ISO date/datetime (UTC); whole days")
    rp.add_argument("--to", default="now", help="end (exclusive): ISO date/datetime, default now")
    rp.add_argument("--patients", nargs="*", help="only these patient ids (space or comma separated)")
    rp.add_argument("--target", choices=["offline", "online", "both"], default="offline")
    rp.add_argument("--workers", type=int, default=1, help="processes, split by Kafka partition")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.set_defaults(func=_replay)

    tr = sub.add_parser("train", help="build a dataset from the offline store, train, evaluate, register")
    tr.add_argument("--from", dest="from_", help="first day YYYY-MM-DD (default: --to minus 90 days)")
    tr.add_argument("--to", help="last day YYYY-MM-DD, inclusive (default: today)")
    tr.add_argument("--split", choices=["time", "patient"], default="time",
                    help="70/15/15 by time (default) or patient-disjoint")
    tr.add_argument("--min-grade", type=int, default=1, help="label only adverse events of this CTCAE grade or more")
    tr.add_argument("--max-epochs", type=int, default=20)
    tr.add_argument("--patience", type=int, default=3, help="epochs without a better validation AUROC")
    tr.add_argument("--batch-rows", type=int, default=512)
    tr.add_argument("--hidden", type=int, nargs="+", default=[64, 32], help="MLP hidden layer sizes")
    tr.add_argument("--seed", type=int, default=42)
    tr.add_argument("--gate", type=float, default=None,
                    help="AUROC margin over production needed to promote (default VITALSTREAM_PROMOTION_MIN_IMPROVEMENT)")
    tr.add_argument("--no-register", action="store_true", help="evaluate only; log nothing to MLflow")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_train)

    demo = sub.add_parser("demo", help="stack up, worker, live simulator and a live view")
    demo.add_argument("--patients", type=int, default=100)
    demo.add_argument("--rate", type=float, default=None, help="total simulated records/s (default: real time)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--history-days", type=float, default=1.0, help="backdated history sent before going live")
    demo.add_argument("--train-days", type=float, default=21.0, help="days of trial history to train on (0: skip)")
    demo.add_argument("--train-patients", type=int, default=80)
    demo.add_argument("--train-monitored-fraction", type=float, default=0.05,
                      help="share of history patients on a 60 s bedside monitor (the bulk of the records)")
    demo.add_argument("--hazard-scale", type=float, default=2.0, help="adverse-event hazard multiplier")
    demo.add_argument("--max-epochs", type=int, default=15)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args, get_settings())


if __name__ == "__main__":
    raise SystemExit(main())
