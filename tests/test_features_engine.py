"""Engine behaviour beyond the oracle: restarts, bounded state, persistence cost, API."""
from __future__ import annotations

import copy
import math
import random
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_features_oracle import DAY, H, T0, Oracle, assert_matches, close, event_streams

from streams.events import CleanAdverseEvent, CleanLab, CleanMedication, CleanPatientEvent, CleanVitals
from tables.features.registry import FEATURE_INDEX, N_FEATURES, features_as_dict
from tables.state import BUCKET_MS, DictStateStore, FeatureEngine, FeatureUpdate, Rejection, context_key


def same(a: Any, b: Any) -> bool:
    if isinstance(a, FeatureUpdate) and isinstance(b, FeatureUpdate):
        return (a.patient_id, a.ts_ms, a.event_id) == (b.patient_id, b.ts_ms, b.event_id) and all(
            close(float(x), float(y)) for x, y in zip(a.values, b.values)
        )
    return a == b


def long_stream(days: float, seed: int = 1, patients: int = 2, ooo: float = 0.03) -> list[Any]:
    """Vitals every ~minute per patient, labs every 6 h, doses every 8 h, some late events."""
    rng = random.Random(seed)
    evs: list[Any] = [CleanPatientEvent(f"P{p}", "enrolled", T0, age=60.0, sex="F", trial_arm="low_dose")
                      for p in range(patients)]  # fmt: skip
    n = int(days * 24 * 60)
    for k in range(n):
        for p in range(patients):
            ts = T0 + k * 60_000 + rng.randint(-20_000, 20_000)
            if rng.random() < ooo:
                ts -= rng.randint(60_000, 50 * 60_000)
            evs.append(CleanVitals(
                f"v{p}-{k}", f"P{p}", ts, rng.choice(["monitor", "nurse"]),
                heart_rate=float(rng.randint(50, 140)), bp_systolic=float(rng.randint(80, 180)),
                bp_diastolic=float(rng.randint(40, 100)), resp_rate=float(rng.randint(8, 30)),
                spo2=rng.choice([None, float(rng.randint(85, 100))]), temperature=rng.randint(355, 400) / 10,
                consciousness=rng.choice("AAAAV"), on_oxygen=rng.random() < 0.2,
            ))  # fmt: skip
            if k % 360 == 5:
                evs.append(CleanLab(f"l{p}-{k}", f"P{p}", ts, rng.choice(["ALT", "AST", "creatinine"]),
                                    float(rng.randint(10, 300)), "U/L"))  # fmt: skip
            if k % 480 == 7:
                evs.append(CleanMedication(f"m{p}-{k}", f"P{p}", ts, rng.choice(["VS-101", "warfarin", "amiodarone"]),
                                           100.0, "mg", "oral"))  # fmt: skip
    return evs


# --------------------------------------------------------------------------- restarts
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams(max_events=40), st.sets(st.integers(0, 40), max_size=6), st.booleans())
def test_restart_gives_identical_vectors(events: list[Any], restarts: set[int], fresh: bool) -> None:
    ref = FeatureEngine(DictStateStore())
    store = DictStateStore()
    eng = FeatureEngine(store)
    for i, ev in enumerate(events):
        if i in restarts:
            eng = FeatureEngine(store) if fresh else (eng.drop_cache() or eng)
        a, b = ref.process(ev), eng.process(ev)
        assert same(a, b), f"event {i}: {a!r} != {b!r}"


def test_restart_mid_long_stream_and_lru_eviction() -> None:
    # Two-hour blocks per patient, so that three patients through a 2-patient LRU miss regularly.
    raw = long_stream(days=1.6, patients=3)
    events = sorted(raw, key=lambda e: ((e.ts_ms - T0) // (2 * H), e.patient_id))
    ref = FeatureEngine(DictStateStore())
    store = DictStateStore()
    eng = FeatureEngine(store, max_cached_patients=2)
    for i, ev in enumerate(events):
        if i % 1999 == 0:
            eng.drop_cache()
        if i == len(events) // 2:
            eng = FeatureEngine(store, max_cached_patients=2)
        a, b = ref.process(ev), eng.process(ev)
        assert same(a, b), f"event {i}"
        assert eng.cached_patients <= 2
    assert eng.rebuilds >= 20


# --------------------------------------------------------------------------- bounded state
def test_store_and_memory_stay_bounded() -> None:
    store = DictStateStore()
    eng = FeatureEngine(store)
    events = long_stream(days=3.0)
    for ev in events:
        eng.process(ev)
    retention = DAY + eng.lateness
    for pid in ("P0", "P1"):
        ctx = store.get(context_key(pid))
        t = max(e.ts_ms for e in events if getattr(e, "patient_id", None) == pid and not isinstance(e, CleanPatientEvent))
        assert ctx["t"] // BUCKET_MS == t // BUCKET_MS  # context holds the latest bucket
        buckets = sorted(int(k.split("|")[2]) for k in store.data if k.startswith(f"v|{pid}|"))
        assert buckets and all(b + BUCKET_MS > t - retention for b in buckets), "expired bucket kept"
        assert len(buckets) <= retention // BUCKET_MS + 1
        assert all(x[0] > t - retention - BUCKET_MS for x in ctx["labs"] + ctx["doses"])
        win = eng._get(pid).win
        assert len(win.rows) <= retention // 40_000 + 512  # 24 h + lateness of rows, plus compaction slack
    assert store.deletes >= 2 * (3 * DAY - retention) // BUCKET_MS - 4


class CountingStore(DictStateStore):
    def __init__(self) -> None:
        super().__init__()
        self.touched: set[str] = set()

    def get(self, key: str) -> Any:
        self.touched.add(key)
        return super().get(key)

    def set(self, key: str, value: Any) -> None:
        self.touched.add(key)
        super().set(key, value)

    def delete(self, key: str) -> None:
        self.touched.add(key)
        super().delete(key)


def test_each_event_touches_a_constant_number_of_keys() -> None:
    store = CountingStore()
    eng = FeatureEngine(store)
    eng.process(CleanPatientEvent("P0", "enrolled", T0))
    counts = []
    for ev in long_stream(days=1.5, patients=1)[1:]:
        store.touched.clear()
        eng.process(ev)
        counts.append(len(store.touched))
    assert max(counts) <= 4 and sum(counts) / len(counts) < 1.3
    # the widest value written stays small: one 10-minute bucket of rows or the context
    assert max(len(v) for v in store.data.values()) < 8_000


class ReferenceHoldingStore(DictStateStore):
    """Holds written values by reference (like a store buffering writes until a flush)
    and remembers a deep copy, to catch the engine mutating a value after writing it."""

    def __init__(self) -> None:
        super().__init__(serialize=False)
        self.snapshots: dict[str, Any] = {}

    def _check(self, key: str) -> None:
        assert self.data.get(key) == self.snapshots.get(key), f"{key} mutated after it was written"

    def get(self, key: str) -> Any:
        self._check(key)
        return super().get(key)

    def set(self, key: str, value: Any) -> None:
        self._check(key)  # the previous value of the key must be as written
        super().set(key, value)
        self.snapshots[key] = copy.deepcopy(value)

    def delete(self, key: str) -> None:
        self._check(key)
        super().delete(key)
        self.snapshots.pop(key, None)

    def assert_unmutated(self) -> None:
        changed = [k for k, v in self.data.items() if v != self.snapshots[k]]
        assert not changed, f"values mutated after they were written: {changed[:5]}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams(max_events=40), st.sets(st.integers(0, 40), max_size=3))
def test_written_values_are_never_mutated(events: list[Any], restarts: set[int]) -> None:
    store = ReferenceHoldingStore()
    eng = FeatureEngine(store)
    for i, ev in enumerate(events):
        if i in restarts:
            eng.drop_cache()  # a rebuild reads values the store still holds by reference
        eng.process(ev)
        store.assert_unmutated()


# --------------------------------------------------------------------------- exactness
def test_exact_against_rational_arithmetic() -> None:
    """Near-constant windows after a wild history: exact, where float running sums are not."""
    rng = random.Random(3)
    eng = FeatureEngine(DictStateStore())
    obs: list[tuple[int, float]] = []
    ts = T0
    for k in range(3000):
        ts += rng.randint(1, 120_000)
        v = rng.uniform(1, 250) if k < 2000 else 100.0 + rng.randint(0, 3) * 2.0**-40
        obs.append((ts, v))
        u = eng.process(CleanVitals(f"e{k}", "P", ts, "monitor", heart_rate=v))
        if k % 50 and k < 2900:
            continue
        for win, ms in (("1h", H), ("24h", DAY)):
            vals = [Fraction(x) for t, x in obs if t > ts - ms]
            n = len(vals)
            mean = sum(vals) / n
            got = features_as_dict(u.values)
            assert got[f"heart_rate_mean_{win}"] == float(mean)
            if n > 1:
                var = sum((x - mean) ** 2 for x in vals) / (n - 1)
                assert math.isclose(got[f"heart_rate_std_{win}"], math.sqrt(float(var)), rel_tol=1e-14)


# --------------------------------------------------------------------------- API
def test_api_contract_and_rejections() -> None:
    eng = FeatureEngine(DictStateStore())
    assert eng.process(CleanPatientEvent("P", "enrolled", T0, age=70.0, sex="M", trial_arm="high_dose")) is None
    u = eng.process(CleanVitals("v1", "P", T0 + H, "monitor", heart_rate=float("nan"), spo2=95.0))
    assert isinstance(u, FeatureUpdate) and u.values.dtype == np.float64 and u.values.shape == (N_FEATURES,)
    d = features_as_dict(u.values)
    assert d["heart_rate_latest"] is None and d["spo2_latest"] == 95.0 and d["heart_rate_count_1h"] == 0.0
    assert d["is_male"] == 1.0 and d["arm_high_dose"] == 1.0 and d["hours_since_enrollment"] == 1.0
    assert d["heart_rate_missing_6h"] == 1.0 and d["spo2_missing_6h"] == 0.0
    late = eng.process(CleanVitals("v0", "P", T0 + H - H - 1, "monitor", heart_rate=80.0))
    assert isinstance(late, Rejection) and late.reason == "late_event" and late.event_id == "v0"
    edge = eng.process(CleanVitals("v2", "P", T0, "monitor", heart_rate=80.0))  # exactly the lateness behind
    assert isinstance(edge, FeatureUpdate) and edge.ts_ms == T0 + H
    assert eng.process(CleanVitals("v3", "P", T0, "monitor", heart_rate=81.0)).reason == "duplicate"
    assert isinstance(eng.process(CleanVitals("v4", "P", T0, "nurse", heart_rate=81.0)), FeatureUpdate)
    assert eng.process(CleanLab("l1", "P", T0 + H, "troponin", 1.0, "ng/L")).reason == "unknown_code"
    assert eng.process(CleanLab("l2", "P", T0 + H, "ALT", float("inf"), "U/L")).reason == "invalid_value"
    assert eng.process(CleanMedication("m1", "P", T0 + H, "aspirin", 1.0, "mg", "oral")).reason == "unknown_code"
    eng.process(CleanLab("l3", "P", T0 + H, "ALT", 40.0, "U/L"))
    assert eng.process(CleanLab("l4", "P", T0 + H, "ALT", 41.0, "U/L")).reason == "duplicate"
    eng.process(CleanMedication("m2", "P", T0 + H, "warfarin", 5.0, "mg", "oral"))
    assert eng.process(CleanMedication("m3", "P", T0 + H, "warfarin", 5.0, "mg", "oral")).reason == "duplicate"
    u = eng.process(CleanMedication("m4", "P", T0 + H, "amiodarone", 0.2, "g", "iv"))
    d = features_as_dict(u.values)
    assert d["drug_interaction_flag"] == 1.0 and d["med_doses_24h"] == 2.0 and d["lab_alt_latest"] == 40.0
    assert eng.process(CleanAdverseEvent("a", "P", T0, T0, "sepsis", 3, True)) is None
    with pytest.raises(TypeError):
        eng.process("not an event")  # type: ignore[arg-type]
    out = eng.process_many([CleanVitals("v9", "P", T0 + 2 * H, "monitor", heart_rate=90.0)] * 2)
    assert isinstance(out[0], FeatureUpdate) and out[1].reason == "duplicate"
    cur = eng.current("P")
    assert cur is not None and np.array_equal(cur.values, out[0].values, equal_nan=True)
    assert eng.current("nobody") is None
    assert FEATURE_INDEX["hours_since_last_vital"] < N_FEATURES


def test_late_event_updates_the_vector_at_latest_time() -> None:
    eng = FeatureEngine(DictStateStore())
    oracle = Oracle()
    evs = [CleanVitals(f"e{i}", "P", T0 + i * 600_000, "monitor", heart_rate=60.0 + i) for i in range(7)]
    evs.append(CleanVitals("late", "P", T0 + 150_000, "nurse", heart_rate=200.0))  # inside the 1 h window
    evs.append(CleanVitals("edge", "P", T0, "nurse", heart_rate=10.0))  # exactly lateness behind: outside 1 h
    for ev in evs:
        got, (kind, exp) = eng.process(ev), oracle.process(ev)
        assert kind == "update"
        assert_matches(got, exp[1])
    d = features_as_dict(got.values)
    assert got.ts_ms == T0 + H and got.event_id == "edge"
    assert (d["heart_rate_max_1h"], d["heart_rate_min_1h"], d["heart_rate_count_1h"]) == (200.0, 61.0, 7.0)
    assert (d["heart_rate_min_24h"], d["heart_rate_count_24h"]) == (10.0, 9.0)


def test_a_redelivered_event_is_a_duplicate_even_when_late_now() -> None:
    # After a crash, records between the committed offset and the saved state come again: their patient's time
    # may have moved past the lateness since. They are duplicates (dropped), not late events (dead-lettered).
    engine = FeatureEngine(DictStateStore(), allowed_lateness_ms=H)
    first = CleanVitals("v1", "P", T0, "monitor", heart_rate=80.0)
    lab = CleanLab("l1", "P", T0 + 60_000, "creatinine", 1.0, "mg/dL")
    later = CleanVitals("v2", "P", T0 + 3 * H, "monitor", heart_rate=90.0)
    for ev in (first, lab, later):
        assert isinstance(engine.process(ev), FeatureUpdate)
    for again in (first, lab):
        outcome = engine.process(again)
        assert isinstance(outcome, Rejection) and outcome.reason == "duplicate", outcome
    stranger = CleanVitals("v3", "P", T0 + 30_000, "monitor", heart_rate=70.0)  # late, and not seen before
    outcome = engine.process(stranger)
    assert isinstance(outcome, Rejection) and outcome.reason == "late_event"
    old = CleanVitals("v4", "P", T0 + 3 * H + DAY, "monitor", heart_rate=91.0)
    assert isinstance(engine.process(old), FeatureUpdate)
    outcome = engine.process(first)  # more than 24 h behind: no longer tracked as a duplicate, only late
    assert isinstance(outcome, Rejection) and outcome.reason == "late_event"


def test_values_whose_scaled_product_is_whole_but_not_their_image() -> None:
    """(69.08 F - 32) * 5 / 9 is 20.599999999999998: times 100 it rounds to 2060.0, yet 2060 / 100 is 20.6. Such
    a value was once taken at scale 100 as 20.6; a finer value after it then found no exact image for it when
    the signal rescaled, and every later event of the patient failed, even after a rebuild."""
    converted = (69.08 - 32.0) * 5.0 / 9.0
    assert converted * 100 == 2060.0 and converted != 20.6
    temps = [37.25, converted, 37.125, 37.0, 36.95, converted]
    times = [T0 + k * 60_000 for k in range(len(temps))]
    times[4] -= 90_000  # out of order: the general path (insert, rescale) as well as the hot path
    eng, rebuilt = FeatureEngine(DictStateStore()), FeatureEngine(DictStateStore())
    seen: list[tuple[int, float]] = []
    for k, (ts, temp) in enumerate(zip(times, temps)):
        ev = CleanVitals(f"e{k}", "P", ts, "monitor", temperature=temp)
        got = eng.process(ev)
        rebuilt.drop_cache()  # every event on state rebuilt from the store
        again = rebuilt.process(ev)
        assert isinstance(got, FeatureUpdate) and isinstance(again, FeatureUpdate)
        assert got.values.tobytes() == again.values.tobytes()  # to the bit
        seen.append((ts, temp))
        latest = max(t for t, _ in seen)
        vals = [Fraction(x) for t, x in seen if t > latest - H]
        assert features_as_dict(got.values)["temperature_mean_1h"] == float(sum(vals) / len(vals))
        assert features_as_dict(got.values)["temperature_min_1h"] == float(min(vals))
