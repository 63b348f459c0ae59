"""Property tests: the incremental engine equals a from-scratch oracle after every event.

The oracle recomputes every feature from the full list of accepted events with
pandas ``rolling(window, closed="right")`` and ``numpy.polyfit``; acceptance
(lateness, duplicates) is re-implemented here independently.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events import CleanLab, CleanMedication, CleanPatientEvent, CleanVitals
from streams.vocab import COMORBIDITIES, DRUGS, INTERACTING_DRUG_PAIRS, LAB_TESTS, TRIAL_ARMS, VITAL_SIGNALS
from tables.features.news2 import news2
from tables.features.registry import FEATURE_NAMES, WINDOWS, features_as_dict, slug
from tables.state import DictStateStore, FeatureEngine, FeatureUpdate, Rejection

H = 3_600_000
DAY = 24 * H
RECALL = 7 * DAY  # hours-since and latest-lab features look back this far
LATENESS = H
T0 = 1_767_225_600_000
CONS = {"A": 0.0, "C": 1.0, "V": 2.0, "P": 3.0, "U": 4.0}
NAN = math.nan


# --------------------------------------------------------------------------- oracle
@dataclass
class _P:
    t: int | None = None
    vitals: list[CleanVitals] = field(default_factory=list)
    labs: list[CleanLab] = field(default_factory=list)
    meds: list[CleanMedication] = field(default_factory=list)
    demo: dict[str, Any] | None = None
    enr: int | None = None


def _num(v: Any) -> float:
    return NAN if v is None else float(v)


def oracle_rolling(vitals: list[CleanVitals], t: int) -> dict[str, float]:
    rows = sorted(vitals, key=lambda e: e.ts_ms)  # stable: equal times keep arrival order
    ts = [e.ts_ms for e in rows] + [t]  # a NaN row at t makes pandas evaluate the window at t
    data = {s: [_num(getattr(e, s)) for e in rows] + [NAN] for s in VITAL_SIGNALS}
    df = pd.DataFrame(data, index=pd.to_datetime(ts, unit="ms"))
    out: dict[str, float] = {}
    for win, ms in WINDOWS:
        r = df.rolling(pd.Timedelta(milliseconds=ms), closed="right")
        stats = {"mean": r.mean(), "std": r.std(), "min": r.min(), "max": r.max(), "count": r.count()}
        for s in VITAL_SIGNALS:
            for name, frame in stats.items():
                out[f"{s}_{name}_{win}"] = float(frame[s].iloc[-1])
            pts = [(e.ts_ms, float(getattr(e, s))) for e in rows if e.ts_ms > t - ms and getattr(e, s) is not None]
            if len(pts) >= 2 and len({p[0] for p in pts}) > 1:
                x = np.array([(p[0] - t) / H for p in pts])
                y = np.array([p[1] for p in pts])
                # Centring changes nothing mathematically but keeps polyfit's own rounding
                # error (~eps*|y|/spread(x)) from swamping slopes over millisecond spreads.
                out[f"{s}_trend_{win}"] = float(np.polyfit(x - x.mean(), y - y.mean(), 1)[0])
            else:
                out[f"{s}_trend_{win}"] = NAN
    return out


def oracle_features(p: _P) -> dict[str, float]:
    t = p.t
    assert t is not None
    out = oracle_rolling(p.vitals, t)
    rows = sorted(p.vitals, key=lambda e: e.ts_ms)

    def since(times: list[int]) -> float:
        recent = [x for x in times if x > t - RECALL]
        return (t - max(recent)) / H if recent else NAN

    def latest(attr: str) -> Any:
        vals = [getattr(e, attr) for e in rows if e.ts_ms > t - DAY and getattr(e, attr) is not None]
        return vals[-1] if vals else None

    lv = {s: latest(s) for s in VITAL_SIGNALS}
    for s in VITAL_SIGNALS:
        out[f"{s}_latest"] = _num(lv[s])
    cons, o2 = latest("consciousness"), latest("on_oxygen")
    out["consciousness_code"] = NAN if cons is None else CONS[cons]
    out["not_alert"] = NAN if cons is None else float(cons != "A")
    out["on_oxygen"] = NAN if o2 is None else float(o2)
    hr, sbp, dbp, temp = (_num(lv[s]) for s in ("heart_rate", "bp_systolic", "bp_diastolic", "temperature"))
    mapv = dbp + (sbp - dbp) / 3
    out["pulse_pressure"] = sbp - dbp
    out["mean_arterial_pressure"] = mapv
    out["shock_index"] = hr / sbp if sbp > 0 else NAN
    out["modified_shock_index"] = hr / mapv if mapv > 0 else NAN
    out["hr_temp_interaction"] = hr * temp
    out["rate_pressure_product"] = hr * sbp
    n2 = news2(lv["resp_rate"], lv["spo2"], o2, lv["bp_systolic"], lv["heart_rate"], cons, lv["temperature"])
    for k, v in n2._asdict().items():
        out[f"news2_{k}"] = v
    # labs
    labs = sorted(p.labs, key=lambda e: e.ts_ms)
    for test in LAB_TESTS:
        win = [e.value for e in labs if e.test == test and e.ts_ms > t - DAY]
        recent = [e.value for e in labs if e.test == test and e.ts_ms > t - RECALL]
        out[f"lab_{slug(test)}_latest"] = recent[-1] if recent else NAN
        out[f"lab_{slug(test)}_change_24h"] = win[-1] - win[0] if len(win) >= 2 else NAN
    out["hours_since_last_lab"] = since([e.ts_ms for e in labs])
    # medications
    recent = [e for e in p.meds if e.ts_ms > t - DAY]
    out["med_doses_24h"] = float(len(recent))
    for d in DRUGS:
        out[f"med_{slug(d)}_doses_24h"] = float(sum(e.drug == d for e in recent))
    to_mg = {"mg": 1.0, "g": 1000.0, "mcg": 0.001}
    out["vs101_dose_mg_24h"] = sum(e.dose * to_mg[e.unit] for e in recent if e.drug == "VS-101" and e.unit in to_mg)
    vs = [e.ts_ms for e in p.meds if e.drug == "VS-101"]
    out["vs101_hours_since_last_dose"] = since(vs)
    given_ = {e.drug for e in recent}
    out["drug_interaction_flag"] = float(any(a in given_ and b in given_ for a, b in INTERACTING_DRUG_PAIRS))
    # context
    d = p.demo
    if d is None:
        for k in ("age", "is_male", "bmi", "comorbidity_count"):
            out[k] = NAN
        for a in TRIAL_ARMS:
            out[f"arm_{slug(a)}"] = NAN
        for c in COMORBIDITIES:
            out[f"comorb_{slug(c)}"] = NAN
    else:
        out["age"] = _num(d.get("age"))
        out["is_male"] = {"M": 1.0, "F": 0.0}.get(d.get("sex"), NAN)  # type: ignore[arg-type]
        w, h = d.get("weight_kg"), d.get("height_cm")
        out["bmi"] = w / (h / 100) ** 2 if w and h else NAN
        arm = d.get("arm")
        for a in TRIAL_ARMS:
            out[f"arm_{slug(a)}"] = float(arm == a) if arm in TRIAL_ARMS else NAN
        com = d.get("comorb")
        out["comorbidity_count"] = NAN if com is None else float(len(com))
        for c in COMORBIDITIES:
            out[f"comorb_{slug(c)}"] = NAN if com is None else float(c in com)
    out["hours_since_enrollment"] = (t - p.enr) / H if p.enr is not None else NAN
    out["hours_since_last_vital"] = since([e.ts_ms for e in p.vitals])
    for s in VITAL_SIGNALS:
        out[f"{s}_missing_6h"] = float(out[f"{s}_count_6h"] == 0)
    return out


class Oracle:
    """Independent re-implementation of acceptance plus from-scratch features."""

    def __init__(self, lateness: int = LATENESS) -> None:
        self.lateness = lateness
        self.patients: dict[str, _P] = {}

    def process(self, ev: Any) -> tuple[str, Any]:
        p = self.patients.setdefault(ev.patient_id, _P())
        if isinstance(ev, CleanPatientEvent):
            if ev.event == "enrolled":
                p.enr = ev.ts_ms if p.enr is None else min(p.enr, ev.ts_ms)
            demo = p.demo or {}
            for k, v in (("age", ev.age), ("sex", ev.sex), ("weight_kg", ev.weight_kg), ("height_cm", ev.height_cm),
                         ("arm", ev.trial_arm)):  # fmt: skip
                if v is not None:
                    demo[k] = v
            if ev.event == "enrolled" or ev.comorbidities:
                demo["comorb"] = set(ev.comorbidities)
            p.demo = demo
            return ("none", None)
        if isinstance(ev, CleanVitals):
            held, key = p.vitals, lambda e: (e.ts_ms, e.source)
        elif isinstance(ev, CleanLab):
            held, key = p.labs, lambda e: (e.ts_ms, e.test)
        else:
            held, key = p.meds, lambda e: (e.ts_ms, e.drug)
        # A duplicate of an event of the last 24 h is a duplicate, however late; older ones are late.
        recent = p.t is None or ev.ts_ms > p.t - DAY
        if recent and any(key(e) == key(ev) for e in held):
            return ("reject", "duplicate")
        if p.t is not None and ev.ts_ms < p.t - self.lateness:
            return ("reject", "late_event")
        if any(key(e) == key(ev) for e in held):
            return ("reject", "duplicate")
        held.append(ev)
        p.t = ev.ts_ms if p.t is None else max(p.t, ev.ts_ms)
        return ("update", (p.t, oracle_features(p)))


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def assert_matches(update: FeatureUpdate, expected: dict[str, float], ctx: str = "") -> None:
    got = update.values
    bad = [
        f"{name}: engine={got[i]!r} oracle={expected[name]!r}"
        for i, name in enumerate(FEATURE_NAMES)
        if not close(float(got[i]), expected[name])
    ]
    assert not bad, f"{ctx}\n" + "\n".join(bad[:20])


# --------------------------------------------------------------------------- strategies
_vital_value = st.one_of(
    st.none(),
    st.integers(30, 200).map(float),  # monitor integers
    st.integers(300, 2000).map(lambda i: i / 10),  # one decimal (temperature, nurse entries)
    st.floats(1.0, 250.0, allow_nan=False, allow_infinity=False),  # arbitrary binary floats
)
_step = st.one_of(
    st.integers(0, 15 * 60_000),  # forward, including equal timestamps
    st.integers(-LATENESS, 0),  # out of order within the lateness
    st.integers(-3 * H, -LATENESS - 1),  # beyond the lateness: rejected
    st.integers(DAY, 30 * H),  # gap longer than the widest window
    st.sampled_from([H, 6 * H, DAY, -H, 60_000, RECALL]),  # exact window edges
    st.integers(RECALL - 2 * H, RECALL + 2 * H),  # around the recall of hours-since and latest-lab features
)


@st.composite
def event_streams(draw: Any, max_events: int = 28) -> list[Any]:
    n = draw(st.integers(1, max_events))
    his: dict[str, int] = {}
    sent: list[CleanVitals] = []
    events: list[Any] = []
    for k in range(n):
        pid = draw(st.sampled_from(["A", "A", "B"]))
        kind = draw(st.sampled_from(["vitals"] * 6 + ["dup", "lab", "med", "patient"]))
        hi = his.get(pid, T0)
        ts = hi + draw(_step)
        his[pid] = max(hi, ts)
        eid = f"e{k}"
        if kind == "dup" and any(e.patient_id == pid for e in sent):
            prev = draw(st.sampled_from([e for e in sent if e.patient_id == pid]))
            events.append(CleanVitals(eid, pid, prev.ts_ms, prev.source, heart_rate=draw(_vital_value)))
        elif kind in ("vitals", "dup"):
            vals = {s: draw(_vital_value) for s in VITAL_SIGNALS}
            ev = CleanVitals(
                eid, pid, ts, draw(st.sampled_from(["monitor", "nurse"])), **vals,
                consciousness=draw(st.sampled_from([None, "A", "A", "C", "V", "P", "U"])),
                on_oxygen=draw(st.sampled_from([None, True, False])),
            )  # fmt: skip
            sent.append(ev)
            events.append(ev)
        elif kind == "lab":
            test = draw(st.sampled_from(LAB_TESTS[:3]))  # few tests so that changes exist
            events.append(CleanLab(eid, pid, ts, test, draw(st.integers(1, 500).map(float)), "u"))
        elif kind == "med":
            drug = draw(st.sampled_from(["VS-101", "amiodarone", "warfarin", "ibuprofen"]))
            unit = draw(st.sampled_from(["mg", "g", "mcg", "units"]))
            events.append(CleanMedication(eid, pid, ts, drug, draw(st.integers(1, 500).map(float)), unit, "oral"))
        else:
            events.append(
                CleanPatientEvent(
                    pid, draw(st.sampled_from(["enrolled", "discharged"])), ts,
                    age=draw(st.sampled_from([None, 61.0])), sex=draw(st.sampled_from([None, "F", "M"])),
                    weight_kg=80.0, height_cm=175.0, trial_arm=draw(st.sampled_from([None, *TRIAL_ARMS])),
                    comorbidities=tuple(draw(st.sets(st.sampled_from(COMORBIDITIES), max_size=2))),
                )  # fmt: skip
            )
    return events


def _check(events: list[Any], engine: FeatureEngine, oracle: Oracle) -> None:
    for i, ev in enumerate(events):
        got = engine.process(ev)
        kind, exp = oracle.process(ev)
        ctx = f"event {i}: {ev!r}"
        if kind == "none":
            assert got is None, ctx
        elif kind == "reject":
            assert isinstance(got, Rejection) and got.reason == exp, f"{ctx}: {got!r} != {exp}"
        else:
            assert isinstance(got, FeatureUpdate), f"{ctx}: {got!r}"
            t, feats = exp
            assert got.ts_ms == t and got.patient_id == ev.patient_id, ctx
            assert got.event_id == ev.event_id
            assert_matches(got, feats, ctx)


_EXAMPLES = int(os.environ.get("FEATURE_EXAMPLES", "50"))  # FEATURE_EXAMPLES=400 for a deeper search
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(event_streams())
def test_engine_matches_oracle_after_every_event(events: list[Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.RankWarning)  # polyfit must never be ill-posed here
        _check(events, FeatureEngine(DictStateStore()), Oracle())


@settings(_SETTINGS, max_examples=max(10, _EXAMPLES // 2))
@given(event_streams(max_events=20), st.integers(0, 2 * H))
def test_engine_matches_oracle_for_any_lateness(events: list[Any], lateness: int) -> None:
    _check(events, FeatureEngine(DictStateStore(), allowed_lateness_ms=lateness), Oracle(lateness))


def test_oracle_is_not_vacuous() -> None:
    """The oracle itself sees real windows: a simple hand-computed case."""
    o = Oracle()
    evs = [CleanVitals(f"e{i}", "p", T0 + i * 600_000, "monitor", heart_rate=60.0 + 10 * i) for i in range(4)]
    out = [o.process(e) for e in evs][-1][1][1]
    assert out["heart_rate_mean_1h"] == 75.0
    assert out["heart_rate_count_1h"] == 4.0
    assert math.isclose(out["heart_rate_trend_1h"], 60.0)  # +10 per 10 min
    assert out["heart_rate_std_24h"] == np.std([60, 70, 80, 90], ddof=1)
    assert math.isnan(out["bp_systolic_mean_1h"]) and out["bp_systolic_count_1h"] == 0.0
    assert features_as_dict(np.zeros(len(FEATURE_NAMES)))["heart_rate_mean_1h"] == 0.0
