"""The vector's blocks that follow the latest vitals: latest values, instantaneous derived values, NEWS2 and
missingness. Compiled with mypyc (setup.py), as the engine writes them for every vitals event.
"""
from __future__ import annotations

from math import nan
from typing import Any, Final, Optional

from streams.vocab import CONSCIOUSNESS_LEVELS, VITAL_SIGNALS

from .news2 import news2_vector
from .registry import FEATURE_INDEX, LATEST_HORIZON_MS, NEWS2_PARAMS, block_start

P_LATEST: Final = block_start(*(f"{s}_latest" for s in VITAL_SIGNALS), "consciousness_code", "not_alert",
                              "on_oxygen")
P_DERIVED: Final = block_start(
    "pulse_pressure", "mean_arterial_pressure", "shock_index",
    "modified_shock_index", "hr_temp_interaction", "rate_pressure_product",
)  # fmt: skip
P_NEWS2: Final = block_start(*(f"news2_{x}" for x in NEWS2_PARAMS), "news2_total", "news2_red_flag",
                             "news2_n_params")
P_MISSING: Final = block_start(*(f"{s}_missing_6h" for s in VITAL_SIGNALS))
P_COUNT6: Final[list[int]] = [FEATURE_INDEX[f"{s}_count_6h"] for s in VITAL_SIGNALS]
CONSCIOUSNESS_CODE: Final[dict[str, float]] = {c: float(i) for i, c in enumerate(CONSCIOUSNESS_LEVELS)}
N_LATEST: Final = len(VITAL_SIGNALS) + 2  # the signals, consciousness, on_oxygen


def write_latest(vec: list[float], last: list[Optional[tuple[int, Any]]], t: int) -> None:
    """Write the latest, derived, NEWS2 and missingness blocks of ``vec`` at time ``t``.

    last: (ts, value) of each signal's newest observation, then consciousness's, then on_oxygen's (None if
    never seen); observations older than the latest-value horizon count as missing. The 6 h counts of the
    rolling block must be current.
    """
    horizon = t - LATEST_HORIZON_MS
    latest: list[Any] = [None] * N_LATEST
    for k in range(N_LATEST):
        e = last[k]
        if e is not None and e[0] > horizon:
            latest[k] = e[1]
    hr: Optional[float] = latest[0]
    sbp: Optional[float] = latest[1]
    dbp: Optional[float] = latest[2]
    rr: Optional[float] = latest[3]
    spo2: Optional[float] = latest[4]
    temp: Optional[float] = latest[5]
    cons: Optional[str] = latest[6]
    o2: Optional[bool] = latest[7]
    fh = nan if hr is None else hr
    fs = nan if sbp is None else sbp
    fd = nan if dbp is None else dbp
    ft = nan if temp is None else temp
    mapv = fd + (fs - fd) / 3.0
    b = P_LATEST
    vec[b] = fh
    vec[b + 1] = fs
    vec[b + 2] = fd
    vec[b + 3] = nan if rr is None else rr
    vec[b + 4] = nan if spo2 is None else spo2
    vec[b + 5] = ft
    vec[b + 6] = nan if cons is None else CONSCIOUSNESS_CODE[cons]
    vec[b + 7] = nan if cons is None else (0.0 if cons == "A" else 1.0)
    vec[b + 8] = nan if o2 is None else (1.0 if o2 else 0.0)
    # Instantaneous derived values (NaN propagates from any missing input).
    b = P_DERIVED
    vec[b] = fs - fd
    vec[b + 1] = mapv
    vec[b + 2] = fh / fs if fs > 0 else nan
    vec[b + 3] = fh / mapv if mapv > 0 else nan
    vec[b + 4] = fh * ft
    vec[b + 5] = fh * fs
    b = P_NEWS2
    for i, score in enumerate(news2_vector(rr, spo2, o2, sbp, hr, cons, temp)):
        vec[b + i] = score
    b = P_MISSING
    for i, c in enumerate(P_COUNT6):
        vec[b + i] = 1.0 if vec[c] == 0.0 else 0.0
