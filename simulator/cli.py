"""`vitalstream simulate`: options and entry point (wired into the main CLI)."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from .config import FAULT_RATE_FIELDS, SimulationConfig
from .producer import history_config, live_config, produce_history, produce_live

# CLI flag -> SimulationConfig field, for the fault-rate overrides.
_FAULT_FLAGS = {f"--{name.replace('_', '-')}": name for name in FAULT_RATE_FIELDS}


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _utc(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 datetime: {text!r}") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulate options on parser."""
    defaults = SimulationConfig()
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--patients", type=int, default=50, help="concurrent census / bed slots (default 50)")
    parser.add_argument("--days", type=_positive,
                        help="history mode: N days backdated to end at --end (or now); with --live: "
                             "send N days of backlog first, then continue live")
    parser.add_argument("--live", action="store_true", help="live mode (default when --days is absent)")
    parser.add_argument("--end", type=_utc, help="history end, ISO-8601 (default now); naive means UTC")
    parser.add_argument("--rate", type=_positive, help="live: emit this many records/s (time compressed)")
    parser.add_argument("--duration", type=_positive, help="live: stop after SECONDS (default: until Ctrl-C)")
    parser.add_argument("--monitored-fraction", type=_rate, default=defaults.fraction_monitored,
                        help=f"fraction of patients on a 60 s bedside monitor (default {defaults.fraction_monitored})")
    parser.add_argument("--hazard-scale", type=_positive, default=1.0, help="multiply all adverse-event hazards")
    for flag, name in _FAULT_FLAGS.items():
        parser.add_argument(flag, dest=name, type=_rate, default=None,
                            help=f"fault rate override (default {getattr(defaults, name)})")
    parser.add_argument("--no-faults", action="store_true", help="set every fault rate to 0")
    parser.add_argument("--dry-run", action="store_true", help="generate and count records; no Kafka")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")


def build_config(args: argparse.Namespace) -> SimulationConfig:
    """SimulationConfig from parsed options (placement in time is done by the mode)."""
    config = SimulationConfig(
        seed=args.seed,
        n_patients=args.patients,
        fraction_monitored=args.monitored_fraction,
        hazard_scale=args.hazard_scale,
    )
    if args.no_faults:
        config = config.without_faults()
    overrides = {name: getattr(args, name) for name in FAULT_RATE_FIELDS if getattr(args, name, None) is not None}
    return dataclasses.replace(config, **overrides)


def run(args: argparse.Namespace, settings: Any) -> int:
    """Run the simulator; returns a process exit code."""
    live = args.live or args.days is None
    if not live and (args.rate is not None or args.duration is not None):
        print("--rate/--duration apply to live mode only", file=sys.stderr)
        return 2
    if live and args.end is not None:
        print("--end applies to history mode only", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
    except ValueError as exc:
        print(f"invalid simulation config: {exc}", file=sys.stderr)
        return 2
    bootstrap = getattr(settings, "kafka_bootstrap", None)
    prefix = getattr(settings, "topic_prefix", "") or ""
    try:
        summary = asyncio.run(_main(args, config, bootstrap, prefix))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - report Kafka/connectivity failures as a CLI error
        print(f"simulate failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _main(args: argparse.Namespace, config: SimulationConfig, bootstrap: str | None,
                topic_prefix: str) -> dict[str, Any]:
    if args.days is not None and not args.live:
        return await produce_history(history_config(config, args.days, args.end), bootstrap,
                                     quiet=args.quiet, dry_run=args.dry_run, topic_prefix=topic_prefix)
    # Live: Ctrl-C / SIGTERM stop gracefully (flush, then print the summary).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # non-main thread or platform without it
            pass
    return await produce_live(live_config(config, history_days=args.days or 0.0), bootstrap, rate=args.rate,
                              duration=args.duration, stop=stop, quiet=args.quiet, dry_run=args.dry_run,
                              topic_prefix=topic_prefix)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: python -m simulator.cli ..."""
    parser = argparse.ArgumentParser(prog="vitalstream simulate", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        from vitalstream.settings import get_settings

        settings: Any = get_settings()
    except Exception:  # noqa: BLE001 - settings module optional when run standalone
        settings = argparse.Namespace(kafka_bootstrap="127.0.0.1:9092")
    return run(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
