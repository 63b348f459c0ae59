"""Process-wide tuning of the stream worker (called once, from app.py, before Faust starts)."""
from __future__ import annotations

import gc

from vitalstream.settings import Settings


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
