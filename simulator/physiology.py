"""Latent physiology: baselines + circadian rhythm + slow drift + AE episodes + excursions.

All functions are vectorised over observation times (epoch ms, int64 arrays).
Signal order: heart_rate, bp_systolic, bp_diastolic, resp_rate, spo2, temperature.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.random import Generator

from streams.vocab import LAB_TESTS

from .cohort import BLEED, DILI, HOUR_MS, LAB_INDEX, RESP, SEPSIS, Episode, Patient

# Change at full intensity (a = 1, grade amplitude 1) per signal.
VITAL_EFFECT = {
    SEPSIS: np.array([32.0, -28.0, -14.0, 9.0, -4.0, 1.9]),
    DILI: np.array([8.0, -4.0, -2.0, 1.0, 0.0, 0.3]),
    BLEED: np.array([30.0, -38.0, -20.0, 5.0, -2.0, -0.2]),
    RESP: np.array([-6.0, -8.0, -4.0, -8.0, -10.0, 0.0]),
}
HYPOTHERMIC_SEPSIS_TEMP = -1.3  # variant bit 0: sepsis with a falling temperature
# Weight of each kind on the latent consciousness score (ACVPU thresholds below).
CONSCIOUSNESS_WEIGHT = {SEPSIS: 1.3, DILI: 0.2, BLEED: 0.9, RESP: 2.4}
ACVPU_THRESHOLDS = np.array([0.7, 1.1, 1.7, 2.4])  # A < 0.7 <= C < 1.1 <= V < 1.7 <= P < 2.4 <= U


def _lab_vec(values: dict[str, float]) -> np.ndarray:
    v = np.zeros(len(LAB_TESTS))
    for name, x in values.items():
        v[LAB_INDEX[name]] = x
    return v


# Labs: value = base * (1 + sum(mult * a)) + sum(add * a) (canonical units).
LAB_ADD = {
    SEPSIS: _lab_vec({"lactate": 3.2, "wbc": 9.0, "platelets": -80, "creatinine": 0.6, "glucose": 35,
                      "bilirubin": 0.4, "potassium": 0.3}),
    DILI: _lab_vec({"bilirubin": 2.8, "glucose": -10}),
    BLEED: _lab_vec({"platelets": -15, "lactate": 2.0, "creatinine": 0.3, "potassium": 0.2}),
    RESP: _lab_vec({"lactate": 0.8, "potassium": 0.3}),
}
LAB_MULT = {
    SEPSIS: _lab_vec({"ALT": 0.5, "AST": 0.5}),
    DILI: _lab_vec({"ALT": 14.0, "AST": 9.0}),
    BLEED: _lab_vec({}),
    RESP: _lab_vec({}),
}
LEUKOPENIC_WBC = -4.0  # variant bit 1 of sepsis
BLEED_PLATELET_DROP = -90.0  # variant bit 1 of bleeding
LAB_NOISE_CV = _lab_vec({"ALT": 0.08, "AST": 0.08, "bilirubin": 0.08, "creatinine": 0.05, "lactate": 0.10,
                         "wbc": 0.08, "platelets": 0.06, "glucose": 0.10, "potassium": 0.03})
LAB_MIN = _lab_vec({"ALT": 5, "AST": 5, "bilirubin": 0.1, "creatinine": 0.3, "lactate": 0.3, "wbc": 0.5,
                    "platelets": 5, "glucose": 40, "potassium": 2.5})

VITAL_MIN = np.array([25.0, 50.0, 25.0, 4.0, 50.0, 33.0])
VITAL_MAX = np.array([220.0, 240.0, 140.0, 50.0, 100.0, 42.0])


def intensity(ep: Episode, t: np.ndarray, lab: bool = False) -> np.ndarray:
    """Deterioration intensity in [0, 1.6]: convex ramp over lead, plateau, then recovery.

    Fatal episodes keep worsening until death instead of recovering.
    """
    lead = ep.lab_lead_ms if lab else ep.lead_ms
    tau = ep.lab_tau_ms if lab else ep.tau_ms
    s = t.astype(np.float64) - ep.onset_ms
    a = np.zeros_like(s)
    pre = (s > -lead) & (s <= 0)
    a[pre] = ((s[pre] + lead) / lead) ** 1.5
    post = s > 0
    if ep.death_ms is not None:
        a[post] = 1.0 + 0.6 * np.minimum(s[post] / max(ep.death_ms - ep.onset_ms, 1), 1.0)
    else:
        sp = s[post]
        a[post] = np.where(sp < ep.plateau_ms, 1.0, np.exp(-(sp - ep.plateau_ms) / tau))
    return a


def _active(p: Patient, lo: int, hi: int) -> list[Episode]:
    return [ep for ep in p.episodes if ep.start_ms < hi and ep.stop_ms > lo]


def latent_vitals(p: Patient, t: np.ndarray, drift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free vitals (6, n) and consciousness score (n,) at times t."""
    hours = t.astype(np.float64) / HOUR_MS + p.tz_hours
    v = p.vital_base[:, None] + drift
    v += p.circ_amp[:, None] * np.cos((2 * math.pi / 24) * (hours[None, :] - p.circ_peak_h[:, None]))
    cons = np.zeros(len(t))
    lo, hi = int(t.min()), int(t.max()) + 1
    for ep in _active(p, lo, hi):
        a = intensity(ep, t) * ep.amp
        eff = VITAL_EFFECT[ep.kind]
        if ep.kind == SEPSIS and ep.variant & 1:
            eff = eff.copy()
            eff[5] = HYPOTHERMIC_SEPSIS_TEMP
        v += eff[:, None] * a[None, :]
        cons += CONSCIOUSNESS_WEIGHT[ep.kind] * a * (1.0 if ep.grade >= 2 else 0.5)
    ex = p.excursions
    if len(ex):
        hit = ex[(ex[:, 0] < hi) & (ex[:, 0] + ex[:, 1] > lo)]
        for start, dur, *eff in hit:
            ph = (t - start) / dur
            bump = np.where((ph > 0) & (ph < 1), np.sin(np.pi * np.clip(ph, 0, 1)), 0.0)
            v += np.asarray(eff)[:, None] * bump[None, :]
    return v, cons


def lab_values(p: Patient, t_ms: int, tests: tuple[int, ...], rng: Generator) -> np.ndarray:
    """Measured lab values (canonical units) for test indices at time t_ms."""
    t = np.array([t_ms], dtype=np.int64)
    mult = np.zeros(len(LAB_TESTS))
    add = np.zeros(len(LAB_TESTS))
    for ep in _active(p, t_ms, t_ms + 1):
        a = float(intensity(ep, t, lab=True)[0]) * ep.amp
        if a == 0.0:
            continue
        ad = LAB_ADD[ep.kind]
        if ep.kind == SEPSIS and ep.variant & 2:
            ad = ad.copy()
            ad[LAB_INDEX["wbc"]] = LEUKOPENIC_WBC
        elif ep.kind == BLEED and ep.variant & 2:
            ad = ad.copy()
            ad[LAB_INDEX["platelets"]] = BLEED_PLATELET_DROP
        add += ad * a
        mult += LAB_MULT[ep.kind] * a
    idx = np.asarray(tests)
    val = p.lab_base[idx] * (1.0 + mult[idx]) + add[idx]
    val *= np.exp(rng.normal(0.0, LAB_NOISE_CV[idx]))
    return np.maximum(val, LAB_MIN[idx])
