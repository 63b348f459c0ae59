"""Physiological ranges in canonical units (docs/events.md).

A value outside `possible` cannot be a real measurement: the record is rejected.
A value inside `possible` but outside `plausible` is kept and flagged
"{field}_implausible" (e.g. a real but extreme tachycardia, or an artifact).
"""
from __future__ import annotations

from typing import NamedTuple


class Range(NamedTuple):
    possible: tuple[float, float]  # inclusive bounds
    plausible: tuple[float, float]  # inclusive bounds


VITAL_RANGES: dict[str, Range] = {
    "heart_rate": Range((0, 350), (25, 220)),
    "bp_systolic": Range((0, 320), (50, 250)),
    "bp_diastolic": Range((0, 250), (20, 150)),
    "resp_rate": Range((0, 100), (4, 60)),
    "spo2": Range((0, 100), (60, 100)),
    "temperature": Range((20.0, 46.0), (32.0, 42.0)),  # degrees C, after conversion
}

LAB_RANGES: dict[str, Range] = {
    "ALT": Range((0, 20_000), (3, 2_000)),
    "AST": Range((0, 20_000), (3, 2_000)),
    "bilirubin": Range((0, 80), (0.1, 30)),
    "creatinine": Range((0, 40), (0.2, 15)),
    "lactate": Range((0, 40), (0.3, 20)),
    "wbc": Range((0, 500), (0.5, 100)),
    "platelets": Range((0, 3_000), (5, 1_500)),
    "glucose": Range((0, 3_000), (20, 800)),
    "potassium": Range((0, 15), (1.5, 9)),
}

DOSE_RANGE = Range((0, 1e6), (0, 1e5))  # must be > 0; checked separately
AGE_RANGE = Range((0, 125), (18, 105))
WEIGHT_RANGE = Range((0.5, 500), (30, 300))
HEIGHT_RANGE = Range((30, 260), (120, 220))
