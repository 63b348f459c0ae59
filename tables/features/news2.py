"""NEWS2 (Royal College of Physicians, 2017), SpO2 scale 1.

Bands are applied as upper-inclusive thresholds on the real line, so a
non-integer value falls into the band whose upper bound it does not exceed
(RR 11.5 -> 0 like 12; temperature 35.05 -> 1 like 35.1). A missing (None/NaN)
parameter gives a NaN sub-score; the total is the sum of the available
sub-scores (NaN when none is available), see docs/features.md.
"""
from __future__ import annotations

import math
from typing import NamedTuple, TypeGuard

NAN = math.nan


def _ok(v: float | None) -> TypeGuard[float]:
    return v is not None and v == v


def score_resp_rate(v: float | None) -> float:
    if not _ok(v):
        return NAN
    return 3.0 if v <= 8 else 1.0 if v <= 11 else 0.0 if v <= 20 else 2.0 if v <= 24 else 3.0


def score_spo2(v: float | None) -> float:
    """SpO2 scale 1 (no hypercapnic target range)."""
    if not _ok(v):
        return NAN
    return 3.0 if v <= 91 else 2.0 if v <= 93 else 1.0 if v <= 95 else 0.0


def score_air_oxygen(on_oxygen: bool | float | None) -> float:
    if on_oxygen is None or on_oxygen != on_oxygen:
        return NAN
    return 2.0 if on_oxygen else 0.0


def score_bp_systolic(v: float | None) -> float:
    if not _ok(v):
        return NAN
    return 3.0 if v <= 90 else 2.0 if v <= 100 else 1.0 if v <= 110 else 0.0 if v <= 219 else 3.0


def score_heart_rate(v: float | None) -> float:
    if not _ok(v):
        return NAN
    return 3.0 if v <= 40 else 1.0 if v <= 50 else 0.0 if v <= 90 else 1.0 if v <= 110 else 2.0 if v <= 130 else 3.0


def score_consciousness(level: str | None) -> float:
    """ACVPU: alert scores 0; new confusion, voice, pain, unresponsive score 3."""
    if level is None:
        return NAN
    return 0.0 if level == "A" else 3.0


def score_temperature(v: float | None) -> float:
    if not _ok(v):
        return NAN
    return 3.0 if v <= 35.0 else 1.0 if v <= 36.0 else 0.0 if v <= 38.0 else 1.0 if v <= 39.0 else 2.0


class News2(NamedTuple):
    """Sub-scores in registry order, then total, red flag and number of parameters present."""

    resp_rate: float
    spo2: float
    air_oxygen: float
    bp_systolic: float
    heart_rate: float
    consciousness: float
    temperature: float
    total: float
    red_flag: float
    n_params: float


def news2_vector(
    resp_rate: float | None,
    spo2: float | None,
    on_oxygen: bool | float | None,
    bp_systolic: float | None,
    heart_rate: float | None,
    consciousness: str | None,
    temperature: float | None,
) -> tuple[float, ...]:
    """The ten NEWS2 outputs (registry order) as a plain tuple: the engine's hot path."""
    subs = (
        score_resp_rate(resp_rate),
        score_spo2(spo2),
        score_air_oxygen(on_oxygen),
        score_bp_systolic(bp_systolic),
        score_heart_rate(heart_rate),
        score_consciousness(consciousness),
        score_temperature(temperature),
    )
    total = 0.0
    n = 0
    red = 0.0
    for s in subs:
        if s == s:  # not NaN
            total += s
            n += 1
            if s == 3.0:
                red = 1.0
    if n == 0:
        return subs + (NAN, NAN, 0.0)
    return subs + (total, red, float(n))


def news2(
    resp_rate: float | None,
    spo2: float | None,
    on_oxygen: bool | float | None,
    bp_systolic: float | None,
    heart_rate: float | None,
    consciousness: str | None,
    temperature: float | None,
) -> News2:
    """All NEWS2 outputs from one set of (latest) observations."""
    return News2(*news2_vector(resp_rate, spo2, on_oxygen, bp_systolic, heart_rate, consciousness, temperature))
