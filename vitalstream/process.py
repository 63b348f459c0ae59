"""Process-wide tuning of the stream worker (called once, from app.py, before Faust starts)."""
from __future__ import annotations

import gc
import logging
import sys

from vitalstream.compiled import build_statuses
from vitalstream.settings import Settings

log = logging.getLogger(__name__)


def tune_gc(settings: Settings) -> None:
    """Collect young objects less often, and stop scanning what exists so far (the imports).

    The feature engine allocates tens of short-lived objects per event; with Python's default threshold of
    700 the cyclic collector ran every few events and each young scan cost ~15 % of the engine's time
    (bench/feature_engine.py). Nothing the pipeline builds relies on cycles being freed quickly. The freeze
    happens before Faust starts: nothing it opens later (RocksDB handles, which Faust releases with
    `gc.collect()`) is frozen.
    """
    if settings.gc_gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)
    gc.collect()  # what is garbage now is not frozen
    gc.freeze()  # the rest moves to the permanent generation: no collection walks it again


def tune_gil(settings: Settings) -> None:
    """Hand the GIL over sooner: when the event loop wakes (a Redis reply, a fetch) while the lake writer's
    thread runs Python (encoding a flush's objects), it waits about this long for it (longer if that thread is
    in a C call that keeps the GIL).

    At Python's default of 5 ms, p99 arrival-to-Redis latency at 2,000 events/s was 188-330 ms in alternating
    runs against 118-176 ms at 1 ms, at the same backlog rate (docs/benchmarks.md, session 11).
    """
    if settings.gil_switch_interval_ms > 0:
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


def log_build_statuses() -> None:
    """Say whether the hot modules run compiled (vitalstream/compiled.py); a slow worker starts here."""
    statuses = build_statuses()
    slow = {module: status for module, status in statuses.items() if status != "compiled"}
    if slow:
        log.warning("modules not running compiled (slower; rebuild with `pip install -e .`): %s", slow)
    else:
        log.info("compiled modules in use: %s", ", ".join(statuses))
