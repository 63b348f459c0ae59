"""Lab, medication and patient-context features from a patient's context record.

The context record (see tables/state.py) holds labs and doses as compact lists
``[ts_ms, test, value]`` / ``[ts_ms, drug, dose, unit]`` in arrival order. Each
windowed block returns the time until which it stays valid, so the engine only
recomputes it when an item arrives or the oldest item leaves the window.
"""
from __future__ import annotations

from math import inf, nan
from typing import Any, Sequence

from streams.timestamps import DAY_MS
from streams.vocab import COMORBIDITIES, DRUGS, INTERACTING_DRUG_PAIRS, LAB_TESTS, TRIAL_ARMS

from .registry import RECALL_MS, STUDY_DRUG

LAB_POS = {test: i for i, test in enumerate(LAB_TESTS)}
DRUG_POS = {drug: i for i, drug in enumerate(DRUGS)}
_PAIRS = tuple((DRUG_POS[a], DRUG_POS[b]) for a, b in INTERACTING_DRUG_PAIRS)
TO_MG = {"mg": 1.0, "g": 1000.0, "mcg": 0.001}  # "units" has no mass equivalent


def lab_block(labs: Sequence[Sequence[Any]], lab_last: dict[str, Sequence[Any]], t: int) -> tuple[list[float], float]:
    """[latest per test..., change_24h per test...] and the time until which it is valid."""
    recall_cut = t - RECALL_MS
    recalled = [lab_last.get(test) for test in LAB_TESTS]
    recalled = [x if x is not None and x[0] > recall_cut else None for x in recalled]
    latest = [nan if x is None else float(x[1]) for x in recalled]
    cut = t - DAY_MS
    inwin = sorted((x for x in labs if x[0] > cut), key=lambda x: x[0])  # stable: ties keep arrival order
    first: list[float | None] = [None] * len(LAB_TESTS)
    last: list[float | None] = [None] * len(LAB_TESTS)
    n = [0] * len(LAB_TESTS)
    for ts, test, value in inwin:
        i = LAB_POS[test]
        if first[i] is None:
            first[i] = value
        last[i] = value
        n[i] += 1
    change = [float(last[i] - first[i]) if n[i] >= 2 else nan for i in range(len(LAB_TESTS))]  # type: ignore[operator]
    valid_until = inwin[0][0] + DAY_MS if inwin else inf
    valid_until = min([valid_until, *(x[0] + RECALL_MS for x in recalled if x is not None)])
    return latest + change, valid_until


def med_block(doses: Sequence[Sequence[Any]], t: int) -> tuple[list[float], float]:
    """[total doses, doses per drug..., VS-101 mg, interaction flag] over (t-24h, t] and validity."""
    cut = t - DAY_MS
    counts = [0] * len(DRUGS)
    mg = 0.0
    oldest = inf
    for ts, drug, dose, unit in doses:
        if ts <= cut:
            continue
        oldest = min(oldest, ts)
        counts[DRUG_POS[drug]] += 1
        if drug == STUDY_DRUG and unit in TO_MG:
            mg += dose * TO_MG[unit]
    flag = 1.0 if any(counts[a] and counts[b] for a, b in _PAIRS) else 0.0
    return [float(sum(counts)), *map(float, counts), mg, flag], oldest + DAY_MS


def demo_block(demo: dict[str, Any] | None) -> list[float]:
    """[age, is_male, bmi, arm one-hot..., comorbidity_count, comorbidity flags...]."""
    n = 3 + len(TRIAL_ARMS) + 1 + len(COMORBIDITIES)
    if demo is None:
        return [nan] * n
    age = demo.get("age")
    sex = demo.get("sex")
    w, h = demo.get("weight_kg"), demo.get("height_cm")
    bmi = w / (h / 100.0) ** 2 if w is not None and h is not None and w > 0 and h > 0 else nan
    arm = demo.get("arm")
    arms = [float(arm == a) for a in TRIAL_ARMS] if arm in TRIAL_ARMS else [nan] * len(TRIAL_ARMS)
    comorb = demo.get("comorb")  # None until an enrolment (or a non-empty list) states them
    known = set(comorb) if comorb is not None else None
    return [
        float(age) if age is not None else nan,
        1.0 if sex == "M" else 0.0 if sex == "F" else nan,
        bmi,
        *arms,
        float(len(known)) if known is not None else nan,
        *((float(c in known) if known is not None else nan) for c in COMORBIDITIES),
    ]
