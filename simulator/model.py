"""Deterministic, lazily streamed trial cohort: `iter_records(config)` in arrival order.

Each patient is a generator that simulates its stay in event-time chunks, applies
delivery faults and releases records through a small local heap once no later chunk
can produce an earlier arrival. `iter_records` merges the patient generators (and
the bed-slot successors they spawn) by arrival time, so memory stays bounded by
the census, not by the length of the history.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import orjson

from streams.timestamps import iso_ms
from streams.vocab import CONSCIOUSNESS_LEVELS, LAB_CANONICAL_UNITS, LAB_TESTS, LAB_UNIT_CONVERSIONS

from .cohort import (
    HOUR_MS,
    STREAM_FAULTS,
    STREAM_IDS,
    STREAM_PHYSIO,
    Patient,
    first_enrollment_ms,
    patient_number,
    patient_rng,
    plan_patient,
    uuids,
)
from .config import (
    TOPIC_ADVERSE_EVENTS,
    TOPIC_LABS,
    TOPIC_MEDICATIONS,
    TOPIC_PATIENTS,
    TOPIC_VITALS,
    SimulationConfig,
)
from .faults import apply_artifact, malformed
from .physiology import ACVPU_THRESHOLDS, VITAL_MAX, VITAL_MIN, lab_values, latent_vitals


@dataclass(frozen=True, slots=True)
class SimRecord:
    """One Kafka record as it would be produced."""

    topic: str
    key: bytes
    value: bytes  # orjson-encoded dict; arbitrary bytes when malformed
    timestamp_ms: int  # arrival time = Kafka record timestamp
    fault: str | None = None  # for tests: "+"-joined kinds in FAULT_KINDS order, e.g. "fahrenheit+late"
    event_time_ms: int | None = None  # clinical time (AE: onset)

    @property
    def faults(self) -> frozenset[str]:
        return frozenset(self.fault.split("+")) if self.fault else frozenset()


def iso_array(t: np.ndarray) -> list[str]:
    """Vectorised iso_ms for an int64 array of epoch ms."""
    return np.datetime_as_string(t.astype("datetime64[ms]"), unit="ms", timezone="UTC").tolist()


# --- measurement model -----------------------------------------------------------------
SRC_MONITOR, SRC_NURSE, SRC_DEVICE = 0, 1, 2
# Measurement noise SD per source (rows) and signal (cols).
NOISE_SD = np.array(
    [
        [1.5, 3.0, 2.5, 0.8, 0.6, 0.05],  # monitor
        [2.0, 4.0, 3.0, 1.5, 0.8, 0.10],  # nurse (manual counts are coarser)
        [2.5, 0.0, 0.0, 1.2, 1.0, 0.00],  # wearable
    ]
)
# Probability that a source records each field: 6 vitals, consciousness, on_oxygen.
PRESENCE = np.array(
    [
        [1, 1, 1, 1, 1, 1, 0, 1],
        [0.95, 0.92, 0.92, 0.90, 0.92, 0.80, 0.95, 0.95],
        [1, 0, 0, 0.6, 1, 0, 0, 0],
    ]
)
NURSE_QUICK_OBS = 0.2  # HR + BP + ACVPU only
# Normal (non-faulty) delivery latency per source: (min ms, span ms).
LATENCY = ((100, 1_900), (60_000, 14 * 60_000), (1_000, 29_000))
DRIFT_SD = np.array([4.0, 6.0, 4.0, 1.2, 0.8, 0.15])
DRIFT_STEP_MS = 15 * 60_000
DRIFT_PHI = float(np.exp(-15 / 180))  # 3 h correlation time
LAB_DIGITS = {"ALT": 0, "AST": 0, "bilirubin": 2, "creatinine": 2, "lactate": 1, "wbc": 1, "platelets": 0,
              "glucose": 0, "potassium": 1}
VARIANT_DIGITS = {"umol/L": 0, "mmol/L": 1}
# Fault uniforms per record (columns of the per-chunk random matrix).
F_MALFORMED, F_ARTIFACT, F_UNIT, F_DUP, F_DELAY, F_AUX1, F_AUX2, F_LATENCY, F_DELAY_AMT, F_DUP_AMT = range(8, 18)
N_FAULT_COLS = 18  # columns 0-7: missing per field


class _Drift:
    """Slow Ornstein-Uhlenbeck wander of each vital on a 15-min grid, interpolated."""

    def __init__(self, rng: np.random.Generator, t0: int) -> None:
        self._rng = rng
        self._t = [t0]
        self._v = [rng.normal(0.0, DRIFT_SD)]

    def at(self, t: np.ndarray) -> np.ndarray:
        hi = int(t.max())
        innov = DRIFT_SD * np.sqrt(1 - DRIFT_PHI**2)
        while self._t[-1] < hi:
            self._t.append(self._t[-1] + DRIFT_STEP_MS)
            self._v.append(DRIFT_PHI * self._v[-1] + innov * self._rng.standard_normal(6))
        lo = int(t.min())
        while len(self._t) > 2 and self._t[1] <= lo:  # times only move forward
            del self._t[0], self._v[0]
        gt = np.asarray(self._t, dtype=np.float64)
        gv = np.asarray(self._v)
        tf = t.astype(np.float64)
        return np.vstack([np.interp(tf, gt, gv[:, k]) for k in range(6)])


def _grid(anchor: int, step: int, t0: int, t1: int, jitter: int, rng: np.random.Generator) -> np.ndarray:
    """Readings every `step` ms from `anchor` with a grid point in [t0, t1), each up to `jitter` ms late."""
    k0 = max(0, -(-(t0 - anchor) // step))
    k1 = max(k0, -(-(t1 - anchor) // step))
    return anchor + step * np.arange(k0, k1, dtype=np.int64) + rng.integers(0, jitter, k1 - k0)


def _round(x: float, digits: int) -> float | int:
    return int(round(x)) if digits == 0 else round(x, digits)


def _patient_records(cfg: SimulationConfig, p: Patient) -> Iterator[SimRecord]:
    """One patient's records in arrival order."""
    physio = patient_rng(cfg.seed, p.slot, p.generation, STREAM_PHYSIO)
    frng = patient_rng(cfg.seed, p.slot, p.generation, STREAM_FAULTS)
    idrng = patient_rng(cfg.seed, p.slot, p.generation, STREAM_IDS)
    end = cfg.end_ms
    limit = end if end is not None else 1 << 62
    pid = p.patient_id
    key = pid.encode()
    heap: list[tuple[int, int, SimRecord]] = []
    seq = itertools.count()
    push = heapq.heappush
    dumps = orjson.dumps
    malformed_rate, artifact_rate, f_rate = cfg.malformed_rate, cfg.artifact_rate, cfg.fahrenheit_rate
    dup_rate, late_rate = cfg.duplicate_rate, cfg.late_rate
    late_or_ooo = cfg.late_rate + cfg.out_of_order_rate

    def deliver(topic: str, value: bytes, ev: int, arrival: int, labels: list[str], delayable: bool,
                f: list[float]) -> None:
        bad = labels[:1] == ["malformed"]
        if delayable and not bad:
            u = f[F_DELAY]
            if u < late_rate:  # beyond a 1 h lateness allowance: 61-180 min after event time
                arrival = ev + 61 * 60_000 + int(f[F_DELAY_AMT] * 119 * 60_000)
                labels.append("late")
            elif u < late_or_ooo:  # held back 2-20 min: lands after later events, within 1 h
                arrival += 120_000 + int(f[F_DELAY_AMT] * 18 * 60_000)
                labels.append("out_of_order")
        fault = "+".join(labels) if labels else None
        if arrival < limit:
            push(heap, (arrival, next(seq), SimRecord(topic, key, value, arrival, fault, ev)))
        if not bad and f[F_DUP] < dup_rate:  # producer retry: identical bytes again
            again = arrival + 1_000 + int(f[F_DUP_AMT] * 119_000)
            if again < limit:
                dfault = fault + "+duplicate" if fault else "duplicate"
                push(heap, (again, next(seq), SimRecord(topic, key, value, again, dfault, ev)))

    # --- lifecycle and adverse-event reports (known up front, released by arrival) -----
    def patient_event(event: str, ts: int) -> None:
        d = {"patient_id": pid, "event": event, "timestamp": iso_ms(ts), **p.demographics()}
        f = frng.random(N_FAULT_COLS).tolist()
        deliver(TOPIC_PATIENTS, dumps(d), ts, ts + int(f[F_LATENCY] * 1_000), [], False, f)

    patient_event("enrolled", p.enroll_ms)
    if p.depart_ms < limit:
        patient_event(p.depart_event, p.depart_ms)
    for ep in p.episodes:
        d = {
            "event_id": ep.event_id,
            "patient_id": pid,
            "onset_time": iso_ms(ep.onset_ms),
            "reported_time": iso_ms(ep.reported_ms),
            "type": ep.kind,
            "severity": ep.grade,
            "serious": ep.serious,
        }
        f = frng.random(N_FAULT_COLS).tolist()
        arrival = ep.reported_ms + 1_000 + int(f[F_LATENCY] * 59_000)
        deliver(TOPIC_ADVERSE_EVENTS, dumps(d), ep.onset_ms, arrival, [], False, f)

    # --- observation streams, chunk by chunk -------------------------------------------
    stop = min(p.depart_ms, limit)
    # Chunks hold ~100 rows when monitored; sparse streams use longer chunks (less overhead).
    chunk = 2 * HOUR_MS if p.monitored else 6 * HOUR_MS if p.device_id else 12 * HOUR_MS
    mon_step = int(cfg.monitor_interval_s * 1000)
    mon_anchor = p.enroll_ms + 60_000 + p.monitor_phase_ms
    dev_step = int(cfg.device_interval_minutes * 60_000)
    dev_anchor = p.enroll_ms + 60_000 + (p.monitor_phase_ms * 7) % dev_step
    sources = ("monitor", "nurse", f"device:{p.device_id}")
    drift = _Drift(physio, p.enroll_ms)
    nurse_ms = p.nurse_ms
    draws, meds = p.lab_draws, p.medications
    nurse_i = lab_i = med_i = 0
    miss = cfg.missing_rate
    t0 = p.enroll_ms
    while t0 < stop:
        t1 = min(t0 + chunk, stop)
        times: list[np.ndarray] = []
        srcs: list[np.ndarray] = []
        for on, anchor, step, src, jitter in ((p.monitored, mon_anchor, mon_step, SRC_MONITOR, 400),
                                              (p.device_id is not None, dev_anchor, dev_step, SRC_DEVICE, 30_000)):
            if on:
                tm = _grid(anchor, step, t0, t1, jitter, physio)
                tm = tm[tm < stop]  # jitter may push the last reading past departure
                if len(tm):
                    times.append(tm)
                    srcs.append(np.full(len(tm), src, dtype=np.int64))
        j = int(np.searchsorted(nurse_ms, t1))
        if j > nurse_i:
            times.append(nurse_ms[nurse_i:j])
            srcs.append(np.full(j - nurse_i, SRC_NURSE, dtype=np.int64))
            nurse_i = j
        if times:
            _vitals(cfg, p, np.concatenate(times), np.concatenate(srcs), drift, physio, frng, idrng,
                    sources, deliver, miss, malformed_rate, artifact_rate, f_rate)

        while lab_i < len(draws) and draws[lab_i][0] < t1:
            ts, tests = draws[lab_i]
            lab_i += 1
            vals = lab_values(p, ts, tests, physio).tolist()
            ids = uuids(idrng, len(tests))
            fr = frng.random((len(tests), N_FAULT_COLS)).tolist()
            panel = ts + 5 * 60_000 + int(frng.random() * 25 * 60_000)  # lab turnaround, 5-30 min
            for idx, val, eid, f in zip(tests, vals, ids, fr):
                test = LAB_TESTS[idx]
                unit = LAB_CANONICAL_UNITS[test]
                labels: list[str] = []
                variants = LAB_UNIT_CONVERSIONS.get(test)
                if variants and f[F_UNIT] < cfg.variant_unit_rate:
                    unit, factor = next(iter(variants.items()))
                    val = _round(val / factor, VARIANT_DIGITS.get(unit, 2))
                    labels.append("variant_unit")
                else:
                    val = _round(val, LAB_DIGITS.get(test, 2))
                d = {"event_id": eid, "patient_id": pid, "timestamp": iso_ms(ts), "test": test,
                     "value": val, "unit": unit}
                value = dumps(d)
                if f[F_MALFORMED] < malformed_rate:
                    value, labels = malformed("labs", d, value, f[F_AUX1], f[F_AUX2]), ["malformed"]
                deliver(TOPIC_LABS, value, ts, panel + int(f[F_LATENCY] * 60_000), labels, True, f)

        while med_i < len(meds) and meds[med_i].ts_ms < t1:
            m = meds[med_i]
            med_i += 1
            f = frng.random(N_FAULT_COLS).tolist()
            d = {"event_id": uuids(idrng, 1)[0], "patient_id": pid, "timestamp": iso_ms(m.ts_ms),
                 "drug": m.drug, "dose": m.dose, "unit": m.unit, "route": m.route}
            value = dumps(d)
            labels = []
            if f[F_MALFORMED] < malformed_rate:
                value, labels = malformed("medications", d, value, f[F_AUX1], f[F_AUX2]), ["malformed"]
            deliver(TOPIC_MEDICATIONS, value, m.ts_ms, m.ts_ms + int(f[F_LATENCY] * 10 * 60_000), labels, True, f)

        # Everything generated later has event time (hence arrival) >= t1.
        while heap and heap[0][0] <= t1:
            yield heapq.heappop(heap)[2]
        t0 = t1
    while heap:
        yield heapq.heappop(heap)[2]


def _vitals(cfg: SimulationConfig, p: Patient, t: np.ndarray, src: np.ndarray, drift: _Drift,
            physio: np.random.Generator, frng: np.random.Generator, idrng: np.random.Generator,
            sources: tuple[str, ...], deliver: Callable[..., None], miss: float, malformed_rate: float,
            artifact_rate: float, f_rate: float) -> None:
    """Simulate and deliver the vitals rows observed at times t by sources src."""
    n = len(t)
    v, cons = latent_vitals(p, t, drift.at(t))
    # Oxygen is started when saturation falls; it lifts the reading it reacts to.
    on_o2 = (v[4] < 92.0) | p.base_o2
    v[4] += np.where(on_o2 & (not p.base_o2), 3.0, 0.0)
    obs = v + physio.standard_normal((6, n)) * NOISE_SD[src].T
    obs = np.clip(obs, VITAL_MIN[:, None], VITAL_MAX[:, None])
    ints = np.rint(obs[:5]).astype(np.int64)
    ints[2] = np.minimum(ints[2], ints[1] - 10)
    hr, sbp, dbp, rr, spo2 = ints.tolist()
    temp = np.round(obs[5], 1).tolist()
    level = np.searchsorted(ACVPU_THRESHOLDS, cons + physio.normal(0.0, 0.12, n)).tolist()
    o2 = on_o2.tolist()
    present = physio.random((n, 8)) < PRESENCE[src]
    quick = (src == SRC_NURSE) & (physio.random(n) < NURSE_QUICK_OBS)
    present[np.ix_(quick, [3, 4, 5, 7])] = False
    fr = frng.random((n, N_FAULT_COLS))
    present &= fr[:, :8] >= miss
    pres = present.tolist()
    fr_l = fr.tolist()
    ids = uuids(idrng, n)
    pid = p.patient_id
    dumps = orjson.dumps
    acvpu = CONSCIOUSNESS_LEVELS
    tl = t.tolist()
    sl = src.tolist()
    stamps = iso_array(t)
    for i in range(n):
        pr = pres[i]
        f = fr_l[i]
        ti = tl[i]
        s = sl[i]
        d: dict[str, Any] = {"event_id": ids[i], "patient_id": pid, "timestamp": stamps[i], "source": sources[s]}
        if pr[0]:
            d["heart_rate"] = hr[i]
        if pr[1]:
            d["bp_systolic"] = sbp[i]
        if pr[2]:
            d["bp_diastolic"] = dbp[i]
        if pr[3]:
            d["resp_rate"] = rr[i]
        if pr[4]:
            d["spo2"] = spo2[i]
        if pr[5]:
            d["temperature"] = temp[i]
            d["temperature_unit"] = "C"
        if pr[6]:
            d["consciousness"] = acvpu[level[i]]
        if pr[7]:
            d["on_oxygen"] = o2[i]
        labels: list[str] = []
        if f[F_MALFORMED] < malformed_rate:
            value = malformed("vitals", d, dumps(d), f[F_AUX1], f[F_AUX2])
            labels.append("malformed")
        else:
            if f[F_ARTIFACT] < artifact_rate and apply_artifact(d, f[F_AUX1], f[F_AUX2]):
                labels.append("artifact")
            if pr[5] and f[F_UNIT] < f_rate:
                d["temperature"] = round(d["temperature"] * 1.8 + 32.0, 1)
                d["temperature_unit"] = "F"
                labels.append("fahrenheit")
            value = dumps(d)
        lo, span = LATENCY[s]
        deliver(TOPIC_VITALS, value, ti, ti + lo + int(f[F_LATENCY] * span), labels, True, f)


def iter_records(config: SimulationConfig) -> Iterator[SimRecord]:
    """All records of the simulation, lazily, in non-decreasing arrival (timestamp_ms) order.

    Ties are broken by patient number, so the order is fully deterministic. With
    ``config.days=None`` the stream is endless (departed patients are replaced).
    """
    end = config.end_ms
    # Heap entries: (time, patient number, record or None, generator or slot/generation).
    heap: list[tuple[int, int, SimRecord | None, Any]] = []
    for slot in range(config.n_patients):
        t = first_enrollment_ms(config, slot)
        if end is None or t < end:
            heap.append((t, patient_number(config, slot, 0), None, (slot, 0)))
    heapq.heapify(heap)
    while heap:
        _, number, rec, src = heap[0]
        if rec is None:  # a patient enrolls: plan the stay, queue the successor
            slot, generation = src
            p = plan_patient(config, slot, generation, heap[0][0])
            if p.next_enroll_ms is not None and (end is None or p.next_enroll_ms < end):
                heapq.heappush(heap, (p.next_enroll_ms, patient_number(config, slot, generation + 1), None,
                                      (slot, generation + 1)))
            gen = _patient_records(config, p)
        else:
            yield rec
            gen = src
        nxt = next(gen, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt.timestamp_ms, number, nxt, gen))
