"""Unit tests of the cohort simulator (no Kafka): determinism, faults, labels, physiology, laziness."""
from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from simulator import SimRecord, SimulationConfig, iter_records
from simulator.cli import add_arguments, build_config, run
from simulator.producer import live_config, produce_history, produce_live
from streams.vocab import (
    ADVERSE_EVENT_TYPES,
    COMORBIDITIES,
    CONSCIOUSNESS_LEVELS,
    DOSE_UNITS,
    DRUGS,
    LAB_CANONICAL_UNITS,
    LAB_TESTS,
    LAB_UNIT_CONVERSIONS,
    PATIENT_EVENTS,
    ROUTES,
    SEXES,
    SITES,
    TRIAL_ARMS,
    VITAL_SIGNALS,
)

HOUR = 3_600_000
VITALS, LABS, MEDS, AES, PATIENTS = (
    "clinical.vitals", "clinical.labs", "clinical.medications", "clinical.adverse_events", "clinical.patients")
MEASUREMENT_TOPICS = (VITALS, LABS, MEDS)
REPO = Path(__file__).resolve().parents[1]

# --- the event contract, checked independently of the simulator's own code ----------------
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PID_RE = re.compile(r"^PT\d{5}$")
FIELDS = {
    VITALS: {"event_id", "patient_id", "timestamp", "source", *VITAL_SIGNALS, "temperature_unit", "consciousness",
             "on_oxygen"},
    LABS: {"event_id", "patient_id", "timestamp", "test", "value", "unit"},
    MEDS: {"event_id", "patient_id", "timestamp", "drug", "dose", "unit", "route"},
    AES: {"event_id", "patient_id", "onset_time", "reported_time", "type", "severity", "serious"},
    PATIENTS: {"patient_id", "event", "timestamp", "age", "sex", "weight_kg", "height_cm", "trial_arm", "site",
               "comorbidities"},
}
REQUIRED = {
    VITALS: {"event_id", "patient_id", "timestamp", "source"},
    LABS: FIELDS[LABS],
    MEDS: FIELDS[MEDS],
    AES: FIELDS[AES],
    PATIENTS: {"patient_id", "event", "timestamp"},
}


def ts_ms(text: Any) -> int | None:
    """Epoch ms of a contract timestamp, None when it is not one."""
    if not isinstance(text, str) or not TS_RE.match(text):
        return None
    try:
        return int(datetime.fromisoformat(text[:-1] + "+00:00").timestamp() * 1000)
    except ValueError:
        return None


def num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_valid(topic: str, value: bytes) -> dict[str, Any] | None:
    """The decoded record when it satisfies the contract, else None."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(d, dict) or not REQUIRED[topic] <= d.keys() <= FIELDS[topic]:
        return None
    if not (isinstance(d["patient_id"], str) and PID_RE.match(d["patient_id"])):
        return None
    if "event_id" in d and not (isinstance(d["event_id"], str) and UUID_RE.match(d["event_id"])):
        return None
    ok: bool
    if topic == VITALS:
        src = d["source"]
        ok = (ts_ms(d["timestamp"]) is not None
              and isinstance(src, str) and (src in ("monitor", "nurse") or (src.startswith("device:") and len(src) > 7))
              and all(num(d[k]) for k in VITAL_SIGNALS if k in d)
              and (("temperature" in d) == ("temperature_unit" in d))
              and d.get("temperature_unit", "C") in ("C", "F")
              and d.get("consciousness", "A") in CONSCIOUSNESS_LEVELS
              and isinstance(d.get("on_oxygen", False), bool))
    elif topic == LABS:
        test = d["test"]
        ok = (ts_ms(d["timestamp"]) is not None and test in LAB_TESTS and num(d["value"])
              and (d["unit"] == LAB_CANONICAL_UNITS[test] or d["unit"] in LAB_UNIT_CONVERSIONS.get(test, {})))
    elif topic == MEDS:
        ok = (ts_ms(d["timestamp"]) is not None and d["drug"] in DRUGS and num(d["dose"]) and d["dose"] > 0
              and d["unit"] in DOSE_UNITS and d["route"] in ROUTES)
    elif topic == AES:
        onset, reported = ts_ms(d["onset_time"]), ts_ms(d["reported_time"])
        ok = (onset is not None and reported is not None and reported >= onset
              and d["type"] in ADVERSE_EVENT_TYPES and type(d["severity"]) is int and 1 <= d["severity"] <= 5
              and isinstance(d["serious"], bool))
    else:
        ok = (ts_ms(d["timestamp"]) is not None and d["event"] in PATIENT_EVENTS
              and num(d.get("age", 50)) and d.get("sex", "F") in SEXES
              and num(d.get("weight_kg", 70)) and num(d.get("height_cm", 170))
              and d.get("trial_arm", "placebo") in TRIAL_ARMS and d.get("site", SITES[0]) in SITES
              and isinstance(d.get("comorbidities", []), list)
              and all(c in COMORBIDITIES for c in d.get("comorbidities", [])))
    return d if ok else None


# --- one streaming pass that gathers everything the tests check -------------------------------
@dataclass
class Sample:
    config: SimulationConfig
    records: int = 0
    order_violations: int = 0
    key_mismatches: int = 0
    invalid: list[tuple[str, bytes]] = field(default_factory=list)  # non-malformed but not contract-valid
    malformed_valid: int = 0
    seen_keys: set[str] = field(default_factory=set)
    text_values: set[str] = field(default_factory=set)
    n: Counter = field(default_factory=Counter)  # denominators
    k: Counter = field(default_factory=Counter)  # fault counts
    bad_semantics: Counter = field(default_factory=Counter)
    vitals_times: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    onsets: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    ooo_after_later: int = 0
    ooo_monitor: int = 0


def collect(config: SimulationConfig) -> Sample:
    s = Sample(config)
    last_ts = -1
    recent: dict[bytes, deque[tuple[int, bytes]]] = defaultdict(deque)  # originals of the last 3 minutes
    max_event: dict[bytes, int] = defaultdict(lambda: -1)
    for r in iter_records(config):
        s.records += 1
        s.order_violations += r.timestamp_ms < last_ts
        last_ts = r.timestamp_ms
        faults = r.faults
        dup = "duplicate" in faults
        if "malformed" in faults:
            s.malformed_valid += parse_valid(r.topic, r.value) is not None
            if not dup:
                s.k["malformed"] += 1
                s.n["malformed"] += 1
            continue
        d = parse_valid(r.topic, r.value)
        if d is None:
            s.invalid.append((r.topic, r.value))
            raw = orjson.loads(r.value)  # non-malformed records are JSON objects even when invalid
            s.seen_keys.update(raw if isinstance(raw, dict) else ())
            continue
        s.key_mismatches += r.key != d["patient_id"].encode()
        s.seen_keys.update(d)
        s.text_values.update(v for v in d.values() if isinstance(v, str))
        # Duplicates: identical bytes of an original of the same patient, resent within 2 minutes.
        window = recent[r.key]
        while window and window[0][0] < r.timestamp_ms - 3 * 60_000:
            window.popleft()
        if dup:
            s.k["duplicate"] += 1
            s.bad_semantics["duplicate"] += not any(v == r.value and r.timestamp_ms - t <= 120_000 for t, v in window)
            continue
        window.append((r.timestamp_ms, r.value))
        s.n["duplicate"] += 1
        lag = r.timestamp_ms - (r.event_time_ms or 0)
        if r.topic in MEASUREMENT_TOPICS:
            s.n["malformed"] += 1
            s.n["delivery"] += 1
            s.k["late"] += "late" in faults
            s.k["out_of_order"] += "out_of_order" in faults
            if "late" in faults:  # beyond the 1 h allowance, at most 3 h
                s.bad_semantics["late"] += not HOUR < lag <= 3 * HOUR
            else:  # everything else arrives within the allowance
                s.bad_semantics["lag"] += not 0 <= lag <= HOUR
            if "out_of_order" in faults and r.topic == VITALS and d["source"] == "monitor":
                s.ooo_monitor += 1
                s.ooo_after_later += max_event[r.key] > r.event_time_ms
        max_event[r.key] = max(max_event[r.key], r.event_time_ms or 0)
        s.bad_semantics["event_time"] += r.event_time_ms != ts_ms(d.get("timestamp", d.get("onset_time")))
        if r.topic == VITALS:
            s.n["artifact"] += 1
            s.k["artifact"] += "artifact" in faults
            if "temperature" in d:
                s.n["fahrenheit"] += 1
                is_f = d["temperature_unit"] == "F"
                s.k["fahrenheit"] += is_f
                s.bad_semantics["fahrenheit"] += is_f != ("fahrenheit" in faults)
                lo, hi = (90, 108) if is_f else (32, 42)
                s.bad_semantics["temp_range"] += not lo <= d["temperature"] <= hi
            if d["source"] == "monitor":
                s.n["missing"] += len(VITAL_SIGNALS)
                s.k["missing"] += sum(name not in d for name in VITAL_SIGNALS)
            s.vitals_times[d["patient_id"]].append(r.event_time_ms)
        elif r.topic == LABS:
            if d["test"] in LAB_UNIT_CONVERSIONS:
                s.n["variant_unit"] += 1
                variant = d["unit"] != LAB_CANONICAL_UNITS[d["test"]]
                s.k["variant_unit"] += variant
                s.bad_semantics["variant_unit"] += variant != ("variant_unit" in faults)
        elif r.topic == AES:
            s.onsets[d["patient_id"]].append(ts_ms(d["onset_time"]))  # type: ignore[arg-type]
    return s


def positive_fraction(s: Sample) -> float:
    """Share of vitals rows at time t whose patient has an AE onset in (t, t + 24 h]."""
    pos = tot = 0
    for pid, times in s.vitals_times.items():
        t = np.asarray(times, dtype=np.int64)
        on = np.sort(np.asarray(s.onsets.get(pid, []), dtype=np.int64))
        tot += len(t)
        if len(on):
            nxt = np.searchsorted(on, t, side="right")
            has = nxt < len(on)
            gap = on[np.minimum(nxt, len(on) - 1)] - t
            pos += int((has & (gap <= 24 * HOUR)).sum())
    return pos / tot


ELEVATED = dict(missing_rate=0.3, artifact_rate=0.05, duplicate_rate=0.08, out_of_order_rate=0.1, late_rate=0.04,
                fahrenheit_rate=0.2, variant_unit_rate=0.4, malformed_rate=0.03)


@pytest.fixture(scope="module")
def default_sample() -> Sample:
    # Default rates and hazards; fewer bedside monitors only to keep the test fast.
    return collect(SimulationConfig(seed=42, n_patients=150, days=7, fraction_monitored=0.1))


@pytest.fixture(scope="module")
def elevated_sample() -> Sample:
    return collect(SimulationConfig(seed=11, n_patients=40, days=2, fraction_monitored=0.5, **ELEVATED))


DIGEST_CODE = """
import hashlib, sys
import orjson
from simulator import SimulationConfig, iter_records
h = hashlib.sha256()
for r in iter_records(SimulationConfig(seed=3, n_patients=8, days=1)):
    h.update(orjson.dumps([r.topic, r.key.decode(), r.value.hex(), r.timestamp_ms, r.fault, r.event_time_ms]))
print(h.hexdigest())
"""


# --- determinism ---------------------------------------------------------------------------------
def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    cfg = SimulationConfig(seed=7, n_patients=15, days=1.5)
    a, b = list(iter_records(cfg)), list(iter_records(cfg))
    assert len(a) > 1000
    assert a == b
    c = list(iter_records(replace(cfg, seed=8)))
    assert [r.value for r in a] != [r.value for r in c]


def test_output_does_not_depend_on_the_process_hash_seed() -> None:
    digests = {
        subprocess.run([sys.executable, "-c", DIGEST_CODE], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout.strip()
        for seed in ("1", "12345")
    }
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_patients_are_independent_of_cohort_size() -> None:
    small = SimulationConfig(seed=5, n_patients=4, days=2)
    keys = {f"PT{i:05d}".encode() for i in range(1, 5)}
    a = [r for r in iter_records(small) if r.key in keys]
    b = [r for r in iter_records(replace(small, n_patients=11)) if r.key in keys]
    assert len(a) > 100
    assert a == b


# --- ordering, keys, contract ----------------------------------------------------------------
def test_arrival_order_non_decreasing(default_sample: Sample) -> None:
    assert default_sample.records > 150_000
    assert default_sample.order_violations == 0


def test_every_valid_record_is_keyed_by_patient_id(default_sample: Sample, elevated_sample: Sample) -> None:
    for s in (default_sample, elevated_sample):
        assert s.key_mismatches == 0


def test_non_malformed_records_satisfy_the_contract(default_sample: Sample, elevated_sample: Sample) -> None:
    for s in (default_sample, elevated_sample):
        assert s.invalid == [], s.invalid[:3]
        assert s.bad_semantics["event_time"] == 0


def test_malformed_records_violate_the_contract(elevated_sample: Sample) -> None:
    assert elevated_sample.k["malformed"] > 100
    assert elevated_sample.malformed_valid == 0


def test_latent_state_never_emitted(default_sample: Sample) -> None:
    allowed = set().union(*FIELDS.values())
    assert default_sample.seen_keys <= allowed
    words = ("risk", "hazard", "frailty", "latent", "intensity")
    assert not [k for k in default_sample.seen_keys if any(w in k for w in words)]
    assert not [v for v in default_sample.text_values if any(w in v.lower() for w in words)]


# --- faults --------------------------------------------------------------------------------------
RATE_FIELDS = {
    "missing": "missing_rate", "artifact": "artifact_rate", "duplicate": "duplicate_rate",
    "out_of_order": "out_of_order_rate", "late": "late_rate", "fahrenheit": "fahrenheit_rate",
    "variant_unit": "variant_unit_rate", "malformed": "malformed_rate",
}
DENOMINATOR = {"out_of_order": "delivery", "late": "delivery"}


@pytest.mark.parametrize("sample_name", ["default_sample", "elevated_sample"])
@pytest.mark.parametrize("kind", sorted(RATE_FIELDS))
def test_fault_rate_matches_config(kind: str, sample_name: str, request: pytest.FixtureRequest) -> None:
    s: Sample = request.getfixturevalue(sample_name)
    p = getattr(s.config, RATE_FIELDS[kind])
    n = s.n[DENOMINATOR.get(kind, kind)]
    observed = s.k[kind] / n
    sigma = math.sqrt(p * (1 - p) / n)
    assert sigma < 0.2 * p, f"sample too small to test {kind}"
    assert abs(observed - p) <= 4 * sigma, f"{kind}: observed {observed:.5f}, configured {p}"


def test_fault_semantics(default_sample: Sample, elevated_sample: Sample) -> None:
    for s in (default_sample, elevated_sample):
        # Duplicates are exact resends; late means 1-3 h; everything else within the 1 h allowance.
        for kind in ("duplicate", "late", "lag", "fahrenheit", "temp_range", "variant_unit"):
            assert s.bad_semantics[kind] == 0, kind
        # Out-of-order monitor readings land after later readings of the same patient.
        assert s.ooo_monitor > 50
        assert s.ooo_after_later >= 0.95 * s.ooo_monitor


def test_without_faults_has_none() -> None:
    recs = list(iter_records(SimulationConfig(seed=2, n_patients=10, days=1).without_faults()))
    assert len(recs) > 500
    assert all(r.fault is None for r in recs)
    monitor = [orjson.loads(r.value) for r in recs if r.topic == VITALS and b'"monitor"' in r.value]
    assert monitor and all(all(k in d for k in VITAL_SIGNALS) for d in monitor)


# --- labels and physiology ----------------------------------------------------------------------
def test_positive_base_rate_with_defaults(default_sample: Sample) -> None:
    assert sum(map(len, default_sample.onsets.values())) >= 15
    assert 0.02 <= positive_fraction(default_sample) <= 0.10


@pytest.fixture(scope="module")
def episodes_sample() -> dict[str, Any]:
    """Ward-only cohort with a raised hazard: many AEs, few records."""
    cfg = SimulationConfig(seed=3, n_patients=80, days=10, fraction_monitored=0.0, fraction_device=0.0,
                           hazard_scale=4.0).without_faults()
    vit: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    labs: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    aes: list[tuple[str, int, str, int]] = []
    events: list[tuple[str, int, str]] = []
    for r in iter_records(cfg):
        d = orjson.loads(r.value)
        pid = d["patient_id"]
        if r.topic == VITALS:
            vit[pid].append((r.event_time_ms, d))
        elif r.topic == LABS:
            labs[pid].append((r.event_time_ms, d))
        elif r.topic == AES:
            aes.append((pid, r.event_time_ms, d["type"], d["severity"]))
        elif r.topic == PATIENTS:
            events.append((pid, r.event_time_ms, d["event"]))
    return {"vit": vit, "labs": labs, "aes": aes, "events": events, "config": cfg}


def _paired(ep: dict[str, Any], kind: str, src: str, field_name: str, recent_h: float, base: tuple[float, float],
            test: str | None = None, log: bool = False) -> np.ndarray:
    """Per AE: mean in the recent_h before onset minus mean in the baseline window (hours before onset)."""
    out = []
    for pid, onset, k, _ in ep["aes"]:
        if k != kind:
            continue
        rows = [(t, d) for t, d in ep[src][pid] if test is None or d["test"] == test]
        now = [d[field_name] for t, d in rows if onset - recent_h * HOUR < t <= onset and field_name in d]
        then = [d[field_name] for t, d in rows if onset - base[1] * HOUR < t <= onset - base[0] * HOUR
                and field_name in d]
        if now and then:
            out.append(np.log(np.mean(now) / np.mean(then)) if log else np.mean(now) - np.mean(then))
    return np.asarray(out)


def _t(x: np.ndarray) -> float:
    return float(x.mean() / (x.std(ddof=1) / math.sqrt(len(x))))


@pytest.mark.parametrize(
    "kind, field_name, sign, min_effect",
    [
        ("sepsis", "heart_rate", +1, 8.0),
        ("sepsis", "resp_rate", +1, 2.0),
        ("sepsis", "bp_systolic", -1, 6.0),
        ("hypotension_bleeding", "bp_systolic", -1, 8.0),
        ("hypotension_bleeding", "heart_rate", +1, 6.0),
        ("respiratory_depression", "resp_rate", -1, 1.5),
        ("respiratory_depression", "spo2", -1, 1.5),
    ],
)
def test_vitals_deteriorate_before_onset(episodes_sample: dict[str, Any], kind: str, field_name: str, sign: int,
                                         min_effect: float) -> None:
    diffs = _paired(episodes_sample, kind, "vit", field_name, 6, (24, 48))
    assert len(diffs) >= 8, f"too few {kind} episodes with both windows"
    assert sign * diffs.mean() >= min_effect
    assert sign * _t(diffs) > 3.0


def test_liver_enzymes_rise_before_dili(episodes_sample: dict[str, Any]) -> None:
    alt = _paired(episodes_sample, "drug_induced_liver_injury", "labs", "value", 24, (48, 96), test="ALT", log=True)
    assert len(alt) >= 6
    assert alt.mean() > math.log(2.0)  # ALT at least doubles on average
    assert _t(alt) > 3.0


def test_deaths_follow_grade_5_events_and_observations_stop(episodes_sample: dict[str, Any]) -> None:
    grade5 = defaultdict(list)
    for pid, onset, _, grade in episodes_sample["aes"]:
        if grade == 5:
            grade5[pid].append(onset)
    deaths = [(pid, t) for pid, t, ev in episodes_sample["events"] if ev == "died"]
    assert deaths, "expected deaths with a raised hazard"
    for pid, t in deaths:
        assert any(onset < t <= onset + 36 * HOUR for onset in grade5[pid]), pid
    departed = {pid: t for pid, t, ev in episodes_sample["events"] if ev in ("died", "withdrawn", "discharged")}
    for pid, t in departed.items():
        assert all(ts < t for ts, _ in episodes_sample["vit"][pid]), pid


def test_adverse_event_hazard_ordered_by_arm() -> None:
    from simulator.cohort import plan_patient

    cfg = SimulationConfig(seed=9, n_patients=2400, days=30)  # planning only: ~1 ms per patient
    per_arm: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # episodes, patient-days
    for slot in range(cfg.n_patients):
        p = plan_patient(cfg, slot, 0, cfg.start_ms)
        per_arm[p.trial_arm][0] += len(p.episodes)
        per_arm[p.trial_arm][1] += (p.depart_ms - p.enroll_ms) / (24 * HOUR)
    rate = {arm: e / d for arm, (e, d) in per_arm.items()}
    assert rate["high_dose"] > 1.15 * rate["low_dose"] > 1.15 * 1.15 * rate["placebo"]


# --- laziness and memory -----------------------------------------------------------------------
def test_generator_is_lazy_for_a_large_history() -> None:
    t0 = time.perf_counter()
    it = iter_records(SimulationConfig(n_patients=1000, days=90))  # ~40 M records if materialized
    first = next(it)
    assert isinstance(first, SimRecord)
    assert sum(1 for _ in itertools.islice(it, 20_000)) == 20_000
    assert time.perf_counter() - t0 < 10.0


def test_memory_is_bounded_in_steady_state() -> None:
    cfg = SimulationConfig(seed=4, n_patients=60, days=40, enrollment_window_hours=1.0, median_stay_days=3.0)
    it = iter_records(cfg)
    for _ in itertools.islice(it, 20_000):  # census enrolled, patients already being replaced
        pass
    blocks = sys.getallocatedblocks()
    consumed = sum(1 for _ in itertools.islice(it, 100_000))
    grown = sys.getallocatedblocks() - blocks
    assert consumed == 100_000
    # Keeping the records would hold >= 3 blocks each (record, value, strings): 300k.
    assert grown < 20_000, f"{grown} more allocated blocks after 100k records"


# --- producer and CLI (fake producer, no Kafka) -------------------------------------------------
class FakeProducer:
    def __init__(self, target: int | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes, int]] = []
        self.target = target
        self.reached = asyncio.Event()
        self.flushed = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def flush(self) -> None:
        self.flushed = True

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value, timestamp_ms))  # type: ignore[arg-type]
        if self.target is not None and len(self.sent) >= self.target:
            self.reached.set()
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def test_history_sends_every_record_with_its_arrival_timestamp() -> None:
    cfg = SimulationConfig(seed=1, n_patients=6, days=1)
    fake = FakeProducer()
    summary = asyncio.run(produce_history(cfg, None, quiet=True, producer=fake, topic_prefix="t1."))
    want = [("t1." + r.topic, r.key, r.value, r.timestamp_ms) for r in iter_records(cfg)]
    assert fake.sent == want
    assert fake.flushed
    assert summary["records"] == len(want)
    assert sum(summary["topics"].values()) == len(want)


def test_live_rate_paces_records_until_stopped() -> None:
    async def scenario() -> tuple[dict[str, Any], float, FakeProducer]:
        fake = FakeProducer(target=300)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(produce_live(live_config(SimulationConfig(n_patients=30)), None, rate=1000.0,
                                                stop=stop, quiet=True, producer=fake))
        await asyncio.wait_for(fake.reached.wait(), timeout=20)
        stop.set()
        summary = await asyncio.wait_for(task, timeout=20)
        return summary, time.perf_counter() - t0, fake

    summary, elapsed, fake = asyncio.run(scenario())
    assert summary["records"] == len(fake.sent) >= 300
    assert elapsed >= 0.25  # 300 records at 1000/s cannot go faster
    assert all(b[3] >= a[3] for a, b in zip(fake.sent, fake.sent[1:]))


def test_live_with_history_sends_the_backlog_unpaced_first() -> None:
    cfg = live_config(SimulationConfig(seed=6, n_patients=10), history_days=0.5)
    now_ms = int(time.time() * 1000)
    backlog = [r for r in itertools.takewhile(lambda r: r.timestamp_ms <= now_ms, iter_records(cfg))]
    assert len(backlog) > 500

    async def scenario() -> tuple[float, FakeProducer]:
        fake = FakeProducer(target=len(backlog))
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(produce_live(cfg, None, stop=stop, quiet=True, producer=fake))
        await asyncio.wait_for(fake.reached.wait(), timeout=20)
        took = time.perf_counter() - t0
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        return took, fake

    took, fake = asyncio.run(scenario())
    assert took < 10.0  # 12 h of simulated arrivals, sent without real-time waits
    assert [s[2] for s in fake.sent[: len(backlog)]] == [r.value for r in backlog]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_options_map_to_config_and_dry_run_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("--days", "0.25", "--patients", "5", "--seed", "9", "--duplicate-rate", "0.5",
                 "--monitored-fraction", "1", "--dry-run")
    cfg = build_config(args)
    assert (cfg.seed, cfg.n_patients, cfg.duplicate_rate, cfg.fraction_monitored) == (9, 5, 0.5, 1.0)
    assert build_config(_args("--no-faults")).late_rate == 0.0
    settings = argparse.Namespace(kafka_bootstrap="127.0.0.1:1", topic_prefix="")
    assert run(args, settings) == 0
    out = capsys.readouterr().out
    summary = orjson.loads(out[out.index("{\n"):])
    assert summary["mode"] == "history" and summary["records"] > 1000
    assert summary["faults"]["duplicate"] > 0.3 * summary["records"] / 1.5
    assert run(_args("--days", "1", "--rate", "10", "--dry-run"), settings) == 2
    with pytest.raises(SystemExit):
        _args("--late-rate", "2")
