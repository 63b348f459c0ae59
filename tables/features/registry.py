"""The feature registry: the only place a feature is defined.

Every engine (live Faust agents, Kafka replay, API) emits a float64 vector whose
positions follow ``FEATURES``; booleans and codes are 0/1 (or small integer)
floats and an undefined value is NaN. Definitions are in docs/features.md.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Sequence

from streams.timestamps import HOUR_MS
from streams.vocab import (
    COMORBIDITIES,
    DRUGS,
    LAB_CANONICAL_UNITS,
    LAB_TESTS,
    TRIAL_ARMS,
    VITAL_SIGNALS,
)

# Bump when the meaning of an existing feature changes without a name change.
DEFINITIONS_VERSION = "2"  # 2: latest-lab and hours-since features recall at most RECALL_MS

WINDOWS: tuple[tuple[str, int], ...] = (("1h", HOUR_MS), ("6h", 6 * HOUR_MS), ("24h", 24 * HOUR_MS))
ROLLING_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "trend", "count")
LATEST_HORIZON_MS = 24 * HOUR_MS
# How far back "latest lab" and "hours since" features look. Bounded so that a replay warmed up over
# this long (plus the allowed lateness) reproduces every live feature exactly (agents/replay.py).
RECALL_MS = 7 * 24 * HOUR_MS
MISSING_WINDOW = "6h"

VITAL_UNITS: dict[str, str] = {
    "heart_rate": "bpm",
    "bp_systolic": "mmHg",
    "bp_diastolic": "mmHg",
    "resp_rate": "breaths/min",
    "spo2": "%",
    "temperature": "degC",
}
STUDY_DRUG = "VS-101"
NEWS2_PARAMS: tuple[str, ...] = (
    "resp_rate",
    "spo2",
    "air_oxygen",
    "bp_systolic",
    "heart_rate",
    "consciousness",
    "temperature",
)


def slug(code: str) -> str:
    """Vocabulary code -> feature-name fragment ("VS-101" -> "vs_101")."""
    return code.lower().replace("-", "_").replace(" ", "_")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature. ``dtype`` is the logical type (float64, int, bool, code); the vector is float64."""

    name: str
    dtype: str
    unit: str
    description: str
    group: str


def _rolling() -> list[FeatureSpec]:
    out = []
    for sig in VITAL_SIGNALS:
        u = VITAL_UNITS[sig]
        for win, _ in WINDOWS:
            for stat in ROLLING_STATS:
                unit, dtype = {"trend": (f"{u}/h", "float64"), "count": ("1", "int")}.get(stat, (u, "float64"))
                desc = {
                    "mean": "mean",
                    "std": "sample standard deviation (ddof=1; NaN with < 2 observations)",
                    "min": "minimum",
                    "max": "maximum",
                    "trend": "least-squares slope per hour (NaN with < 2 observations or no time spread)",
                    "count": "number of observations (0 when none)",
                }[stat]
                out.append(FeatureSpec(f"{sig}_{stat}_{win}", dtype, unit, f"{sig} {desc} over (t-{win}, t]", "rolling"))
    return out


def _latest() -> list[FeatureSpec]:
    out = [
        FeatureSpec(f"{s}_latest", "float64", VITAL_UNITS[s], f"last {s} observed in (t-24h, t], else NaN", "latest")
        for s in VITAL_SIGNALS
    ]
    out += [
        FeatureSpec("consciousness_code", "code", "ACVPU", "last ACVPU in (t-24h, t]: A=0 C=1 V=2 P=3 U=4", "latest"),
        FeatureSpec("not_alert", "bool", "1", "1 if the last ACVPU in (t-24h, t] is not A", "latest"),
        FeatureSpec("on_oxygen", "bool", "1", "last on_oxygen flag in (t-24h, t]", "latest"),
    ]
    return out


def _derived() -> list[FeatureSpec]:
    d = "derived"
    return [
        FeatureSpec("pulse_pressure", "float64", "mmHg", "SBP_latest - DBP_latest", d),
        FeatureSpec("mean_arterial_pressure", "float64", "mmHg", "DBP + (SBP - DBP)/3 from latest values", d),
        FeatureSpec("shock_index", "float64", "bpm/mmHg", "HR_latest / SBP_latest (NaN if SBP <= 0)", d),
        FeatureSpec("modified_shock_index", "float64", "bpm/mmHg", "HR_latest / MAP (NaN if MAP <= 0)", d),
        FeatureSpec("hr_temp_interaction", "float64", "bpm*degC", "HR_latest * temperature_latest", d),
        FeatureSpec("rate_pressure_product", "float64", "bpm*mmHg", "HR_latest * SBP_latest", d),
    ]


def _news2() -> list[FeatureSpec]:
    g = "news2"
    out = [FeatureSpec(f"news2_{p}", "int", "points", f"NEWS2 sub-score for {p} (NaN if missing)", g) for p in NEWS2_PARAMS]
    out += [
        FeatureSpec("news2_total", "int", "points", "sum of the available NEWS2 sub-scores (NaN if none)", g),
        FeatureSpec("news2_red_flag", "bool", "1", "1 if any single sub-score is 3 (NaN if none available)", g),
        FeatureSpec("news2_n_params", "int", "1", "number of NEWS2 parameters available (0-7)", g),
    ]
    return out


def _labs() -> list[FeatureSpec]:
    out = []
    for test in LAB_TESTS:
        u = LAB_CANONICAL_UNITS[test]
        out.append(FeatureSpec(f"lab_{slug(test)}_latest", "float64", u, f"most recent {test} within 7 days (NaN if none)", "labs"))
    for test in LAB_TESTS:
        u = LAB_CANONICAL_UNITS[test]
        out.append(
            FeatureSpec(
                f"lab_{slug(test)}_change_24h",
                "float64",
                u,
                f"last minus first {test} in (t-24h, t] by event time (NaN with < 2)",
                "labs",
            )
        )
    out.append(FeatureSpec("hours_since_last_lab", "float64", "h", "(t - time of the last lab of any test)/1h, NaN if none within 7 days", "labs"))
    return out


def _meds() -> list[FeatureSpec]:
    g = "medications"
    out = [FeatureSpec("med_doses_24h", "int", "doses", "administrations of any drug in (t-24h, t]", g)]
    out += [FeatureSpec(f"med_{slug(d)}_doses_24h", "int", "doses", f"administrations of {d} in (t-24h, t]", g) for d in DRUGS]
    out += [
        FeatureSpec("vs101_dose_mg_24h", "float64", "mg", "total VS-101 in (t-24h, t] in mg (mg/g/mcg doses)", g),
        FeatureSpec("vs101_hours_since_last_dose", "float64", "h", "(t - last VS-101 dose time)/1h, NaN if none within 7 days", g),
        FeatureSpec("drug_interaction_flag", "bool", "1", "1 if both drugs of an interacting pair were given in (t-24h, t]", g),
    ]
    return out


def _context() -> list[FeatureSpec]:
    g = "context"
    out = [
        FeatureSpec("age", "float64", "years", "age at enrolment", g),
        FeatureSpec("is_male", "bool", "1", "1 if sex is M, 0 if F, NaN if unknown", g),
        FeatureSpec("bmi", "float64", "kg/m2", "weight_kg / (height_cm/100)^2", g),
    ]
    out += [FeatureSpec(f"arm_{slug(a)}", "bool", "1", f"trial arm one-hot: {a} (NaN if arm unknown)", g) for a in TRIAL_ARMS]
    out.append(FeatureSpec("comorbidity_count", "int", "1", "number of comorbidities (NaN until stated at enrolment)", g))
    out += [FeatureSpec(f"comorb_{slug(c)}", "bool", "1", f"has {c} (NaN until comorbidities are stated)", g) for c in COMORBIDITIES]
    out += [
        FeatureSpec("hours_since_enrollment", "float64", "h", "(t - enrolment time)/1h", g),
        FeatureSpec("hours_since_last_vital", "float64", "h", "(t - time of the last vitals record)/1h, NaN if none within 7 days", g),
    ]
    return out


def _missing() -> list[FeatureSpec]:
    return [
        FeatureSpec(f"{s}_missing_{MISSING_WINDOW}", "bool", "1", f"1 if no {s} observation in (t-6h, t]", "missingness")
        for s in VITAL_SIGNALS
    ]


FEATURES: tuple[FeatureSpec, ...] = tuple(
    _rolling() + _latest() + _derived() + _news2() + _labs() + _meds() + _context() + _missing()
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: dict[str, int] = {n: i for i, n in enumerate(FEATURE_NAMES)}
N_FEATURES: int = len(FEATURES)
FEATURE_GROUPS: tuple[str, ...] = tuple(dict.fromkeys(f.group for f in FEATURES))
FEATURE_VERSION: str = hashlib.sha256(
    json.dumps([DEFINITIONS_VERSION, [(f.name, f.dtype) for f in FEATURES]], separators=(",", ":")).encode()
).hexdigest()[:12]

if len(FEATURE_INDEX) != N_FEATURES:  # pragma: no cover - guards edits to this file
    raise RuntimeError("duplicate feature names in the registry")


def rolling_base(signal: str, window: str) -> int:
    """Position of ``{signal}_mean_{window}``; the six stats follow in ROLLING_STATS order."""
    return FEATURE_INDEX[f"{signal}_{ROLLING_STATS[0]}_{window}"]


def block_start(*names: str) -> int:
    """Start of a run of features the engine writes as one block; fails fast if the registry moved them."""
    start = FEATURE_INDEX[names[0]]
    if FEATURE_NAMES[start : start + len(names)] != names:
        raise RuntimeError(f"registry layout changed around {names[0]!r}")
    return start


def features_as_dict(values: Sequence[float]) -> dict[str, float | None]:
    """Vector -> {name: value}, NaN as None (JSON-able)."""
    if len(values) != N_FEATURES:
        raise ValueError(f"expected {N_FEATURES} values, got {len(values)}")
    return {n: (None if math.isnan(v) else float(v)) for n, v in zip(FEATURE_NAMES, values)}
