"""Process-wide tuning shared by the stream worker and replay."""
from __future__ import annotations

import gc

from vitalstream.settings import Settings


def tune_gc(settings: Settings) -> None:
    """Collect young objects less often, and stop scanning what exists so far (imports, startup state).

    The feature engine allocates tens of short-lived objects per event; with Python's default threshold of
    700 the cyclic collector ran every few events and each young scan cost ~15 % of the engine's time
    (bench/feature_engine.py). Nothing the pipeline builds relies on cycles being freed quickly.
    """
    if settings.gc_gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)
    gc.freeze()  # long-lived startup objects move to the permanent generation: no collection walks them again
