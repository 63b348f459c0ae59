"""Cohort and per-patient story: demographics, baselines, medications, adverse events.

A patient's whole stay (enrollment to departure) is planned up front from its own
random stream, so it never depends on other patients, on iteration order or on how
the stream is later chunked. Hazards and frailty live only in this module's objects
and are never serialized.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.random import PCG64, Generator, SeedSequence

from streams.timestamps import DAY_MS, HOUR_MS
from streams.vocab import ADVERSE_EVENT_TYPES, COMORBIDITIES, LAB_TESTS, SITES, TRIAL_ARMS

from .config import SimulationConfig

MAX_PATIENT_NUMBER = 99_999  # ids are PT + 5 digits

# Independent random streams per patient (SeedSequence spawn keys).
STREAM_STORY, STREAM_PHYSIO, STREAM_FAULTS, STREAM_IDS, STREAM_SLOT = range(5)

SEPSIS, DILI, BLEED, RESP = ADVERSE_EVENT_TYPES  # vocabulary order
VITAL_INDEX = {"heart_rate": 0, "bp_systolic": 1, "bp_diastolic": 2, "resp_rate": 3, "spo2": 4, "temperature": 5}
LAB_INDEX = {name: i for i, name in enumerate(LAB_TESTS)}

# Site clocks (UTC offset, hours): circadian rhythm and dosing follow local time.
SITE_UTC_OFFSET_HOURS = {"SITE01": 0.0, "SITE02": 1.0, "SITE03": -5.0, "SITE04": -8.0, "SITE05": 9.0}

# --- adverse-event hazards (events per patient-day before multipliers) -------------
BASE_HAZARD_PER_DAY = {SEPSIS: 0.009, DILI: 0.008, BLEED: 0.004, RESP: 0.0015}
ARM_HAZARD = {  # placebo < low_dose < high_dose for every kind
    SEPSIS: {"placebo": 1.0, "low_dose": 1.3, "high_dose": 1.7},
    DILI: {"placebo": 0.4, "low_dose": 1.5, "high_dose": 3.0},
    BLEED: {"placebo": 1.0, "low_dose": 1.3, "high_dose": 1.8},
    RESP: {"placebo": 1.0, "low_dose": 1.2, "high_dose": 1.5},
}
COMORBIDITY_HAZARD = {
    SEPSIS: {"diabetes": 1.6, "ckd": 1.4, "copd": 1.3, "heart_failure": 1.2, "liver_disease": 1.3},
    DILI: {"liver_disease": 2.5, "heart_failure": 1.2},
    BLEED: {"ckd": 1.5, "liver_disease": 1.8, "hypertension": 1.2},
    RESP: {"copd": 2.5, "heart_failure": 1.3, "ckd": 1.3},
}
AGE_HAZARD_PER_YEAR = 0.025  # hazard x exp(0.025 * (age - 60))
MONITORED_HAZARD = 1.8  # monitored patients are the sicker ones
MORPHINE_RESP_DEP_PROB = 0.010  # per dose, before multipliers
# CTCAE grade 1..5 probabilities.
GRADE_PROBS = {
    SEPSIS: (0.05, 0.30, 0.40, 0.18, 0.07),
    DILI: (0.35, 0.35, 0.22, 0.07, 0.01),
    BLEED: (0.20, 0.35, 0.30, 0.12, 0.03),
    RESP: (0.30, 0.35, 0.25, 0.08, 0.02),
}
# Deterioration ramp before onset (vitals), hours.
LEAD_HOURS = {SEPSIS: (4.0, 12.0), DILI: (6.0, 12.0), BLEED: (4.0, 10.0), RESP: (4.0, 8.0)}
DILI_LAB_LEAD_HOURS = (24.0, 48.0)  # liver enzymes rise over 1-2 days
REFRACTORY_MS = 48 * HOUR_MS  # no new episode within 2 days of the previous onset
WITHDRAWAL_HAZARD_PER_DAY = 0.003  # consent withdrawal unrelated to AEs


@dataclass(slots=True)
class Episode:
    """One adverse event and its latent physiological time course."""

    kind: str
    onset_ms: int
    lead_ms: int  # vitals ramp before onset
    lab_lead_ms: int  # lab ramp before onset (longer for DILI)
    plateau_ms: int  # full effect after onset
    tau_ms: int  # recovery time constant (vitals)
    lab_tau_ms: int
    grade: int
    serious: bool
    reported_ms: int
    death_ms: int | None
    amp: float  # effect scale from grade
    variant: int  # bit 0: hypothermic sepsis, bit 1: leukopenic sepsis / platelet drop
    event_id: str = ""

    @property
    def start_ms(self) -> int:
        return self.onset_ms - max(self.lead_ms, self.lab_lead_ms)

    @property
    def stop_ms(self) -> int:
        """After this, the residual effect is negligible."""
        if self.death_ms is not None:
            return self.death_ms
        return self.onset_ms + self.plateau_ms + 7 * max(self.tau_ms, self.lab_tau_ms)


@dataclass(slots=True)
class Medication:
    ts_ms: int
    drug: str
    dose: float
    unit: str
    route: str


@dataclass(slots=True)
class Patient:
    """Planned story of one patient (internal: holds latent state, never emitted)."""

    slot: int
    generation: int
    number: int
    patient_id: str
    age: int
    sex: str
    weight_kg: float
    height_cm: float
    trial_arm: str
    site: str
    comorbidities: tuple[str, ...]
    monitored: bool
    device_id: str | None
    tz_hours: float
    frailty: float  # latent
    base_o2: bool
    vital_base: np.ndarray  # (6,)
    circ_amp: np.ndarray  # (6,)
    circ_peak_h: np.ndarray  # (6,) local hour of the peak
    lab_base: np.ndarray  # (len(LAB_TESTS),)
    monitor_phase_ms: int
    enroll_ms: int
    depart_ms: int
    depart_event: str  # discharged | withdrawn | died
    next_enroll_ms: int | None  # successor in this bed slot
    episodes: list[Episode] = field(default_factory=list)
    medications: list[Medication] = field(default_factory=list)
    nurse_ms: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    lab_draws: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    excursions: np.ndarray = field(default_factory=lambda: np.empty((0, 8)))  # start, dur, 6 effects

    def demographics(self) -> dict[str, object]:
        return {
            "age": self.age,
            "sex": self.sex,
            "weight_kg": self.weight_kg,
            "height_cm": self.height_cm,
            "trial_arm": self.trial_arm,
            "site": self.site,
            "comorbidities": list(self.comorbidities),
        }


def patient_rng(seed: int, slot: int, generation: int, stream: int) -> Generator:
    """Independent generator for one (bed slot, occupant, purpose)."""
    return Generator(PCG64(SeedSequence(seed, spawn_key=(slot, generation, stream))))


def first_enrollment_ms(cfg: SimulationConfig, slot: int) -> int:
    rng = patient_rng(cfg.seed, slot, 0, STREAM_SLOT)
    return cfg.start_ms + int(rng.random() * cfg.enrollment_window_ms)


def patient_number(cfg: SimulationConfig, slot: int, generation: int) -> int:
    return slot + 1 + generation * cfg.n_patients


def _local_hour_times(lo: int, hi: int, tz: float, first_hour: float, interval_h: float) -> list[int]:
    """Epoch ms in [lo, hi) at local clock first_hour + k * interval_h."""
    x = lo / HOUR_MS + tz - first_hour
    k = math.ceil(x / interval_h)
    out = []
    while True:
        t = int(round(((k * interval_h) + first_hour - tz) * HOUR_MS))
        if t >= hi:
            return out
        if t >= lo:
            out.append(t)
        k += 1


def _poisson_times(rng: Generator, rate_per_day: float, lo: int, hi: int) -> np.ndarray:
    """Sorted event times of a homogeneous Poisson process on [lo, hi)."""
    if hi <= lo or rate_per_day <= 0:
        return np.empty(0, np.int64)
    n = rng.poisson(rate_per_day * (hi - lo) / DAY_MS)
    return np.sort(rng.integers(lo, hi, size=n))


def plan_patient(cfg: SimulationConfig, slot: int, generation: int, enroll_ms: int) -> Patient:
    """Draw one patient's demographics, baselines and whole-stay story."""
    rng = patient_rng(cfg.seed, slot, generation, STREAM_STORY)
    number = patient_number(cfg, slot, generation)

    # --- demographics -------------------------------------------------------------
    age = int(np.clip(rng.normal(58, 14), 18, 90))
    sex = "F" if rng.random() < 0.5 else "M"
    height = float(np.clip(rng.normal(176, 7) if sex == "M" else rng.normal(163, 6.5), 145, 205))
    bmi = float(np.clip(rng.normal(27, 5), 17, 45))
    weight = round(bmi * (height / 100) ** 2, 1)
    old = (age - 50) / 10
    comorb_p = {
        "hypertension": 0.25 + 0.08 * old,
        "diabetes": 0.12 + 0.03 * old + 0.02 * (bmi - 27),
        "copd": 0.08 + 0.02 * old,
        "ckd": 0.07 + 0.03 * old,
        "heart_failure": 0.06 + 0.03 * old,
        "liver_disease": 0.04,
    }
    draws = rng.random(len(COMORBIDITIES))
    comorbidities = tuple(
        c for c, u in zip(COMORBIDITIES, draws) if u < float(np.clip(comorb_p.get(c, 0.05), 0.01, 0.8))
    )
    has = set(comorbidities).__contains__
    trial_arm = TRIAL_ARMS[int(rng.integers(len(TRIAL_ARMS)))]
    site = SITES[int(rng.integers(len(SITES)))]
    tz = SITE_UTC_OFFSET_HOURS.get(site, 0.0)
    u_mon, u_dev = rng.random(2)
    monitored = bool(u_mon < cfg.fraction_monitored)
    device_id = f"WR-{int(rng.integers(10_000, 99_999))}"
    if monitored or u_dev >= cfg.fraction_device:
        device_id = None
    frailty = float(rng.lognormal(-0.125, 0.5))  # mean ~1
    base_o2 = bool(rng.random() < (0.35 if has("copd") else 0.10 if has("heart_failure") else 0.02))

    # --- physiological baselines -----------------------------------------------------
    sbp = rng.normal(122, 13) + 12 * has("hypertension") + 3 * old
    vital_base = np.array(
        [
            rng.normal(76, 9) + 5 * has("heart_failure"),
            sbp,
            0.55 * sbp + rng.normal(10, 5),
            rng.normal(15.5, 1.8) + 2 * has("copd"),
            min(99.5, rng.normal(97.3, 1.0) - 3.5 * has("copd")),
            rng.normal(36.75, 0.2),
        ]
    )
    circ_amp = np.array(
        [rng.uniform(3, 7), rng.uniform(4, 9), rng.uniform(2, 5), rng.uniform(0.5, 1.2), 0.3, rng.uniform(0.2, 0.4)]
    )
    hr_peak = rng.normal(16, 1.5)
    circ_peak_h = np.array([hr_peak, rng.normal(11, 1.5), rng.normal(11, 1.5), hr_peak, 15.0, rng.normal(18, 1.0)])
    lab_median = {
        "ALT": 22 * (2.0 if has("liver_disease") else 1.0),
        "AST": 24 * (1.8 if has("liver_disease") else 1.0),
        "bilirubin": 0.6 * (1.8 if has("liver_disease") else 1.0),
        "creatinine": 0.9 * (2.2 if has("ckd") else 1.0),
        "lactate": 1.1,
        "wbc": 7.0,
        "platelets": 250 * (0.6 if has("liver_disease") else 1.0),
        "glucose": 100 * (1.5 if has("diabetes") else 1.0),
        "potassium": 4.2 + 0.5 * has("ckd"),
    }
    lab_sigma = {"ALT": 0.3, "AST": 0.3, "bilirubin": 0.3, "creatinine": 0.15, "glucose": 0.08, "potassium": 0.05}
    lab_base = np.array([lab_median[t] * rng.lognormal(0, lab_sigma.get(t, 0.2)) for t in LAB_TESTS])

    # --- stay -----------------------------------------------------------------------
    stay_days = float(np.clip(rng.lognormal(math.log(cfg.median_stay_days), 0.5), 3, 120))
    depart_ms = enroll_ms + int(stay_days * DAY_MS)
    depart_event = "discharged"
    withdraw_ms = enroll_ms + int(rng.exponential(1 / WITHDRAWAL_HAZARD_PER_DAY) * DAY_MS)
    if withdraw_ms < depart_ms:
        depart_ms, depart_event = withdraw_ms, "withdrawn"

    # --- medications (planned over the provisional stay, truncated later) ------------
    meds: list[Medication] = []

    def scheduled(drug: str, dose: float, unit: str, route: str, first_h: float, every_h: float, lo: int,
                  hi: int) -> None:
        times = _local_hour_times(lo, hi, tz, first_h, every_h)
        jitter = rng.uniform(-20, 40, len(times)) * 60_000  # given around the scheduled time
        meds.extend(Medication(t + int(j), drug, dose, unit, route) for t, j in zip(times, jitter.tolist()))

    def prn(drug: str, dose: float, unit: str, route: str, rate: float) -> None:
        for t in _poisson_times(rng, rate, enroll_ms + 5 * 60_000, depart_ms):
            meds.append(Medication(int(t), drug, dose, unit, route))

    schedule = cfg.dosing.get(trial_arm)
    if schedule is not None:
        scheduled("VS-101", schedule.dose_mg, "mg", schedule.route, schedule.first_hour_local,
                  schedule.interval_hours, enroll_ms + 2 * HOUR_MS, depart_ms)
    u = rng.random(4)
    on_warfarin = bool(u[0] < 0.12 + 0.15 * has("heart_failure"))
    on_amiodarone = bool(u[1] < 0.06 + 0.25 * has("heart_failure"))
    on_morphine = bool(u[2] < 0.3)
    if on_warfarin:
        scheduled("warfarin", float(rng.choice([2.5, 5.0, 7.5])), "mg", "oral", 18.0, 24.0, enroll_ms, depart_ms)
    if on_amiodarone:
        scheduled("amiodarone", 200.0, "mg", "oral", 9.0, 24.0, enroll_ms, depart_ms)
    morphine_start = len(meds)
    if on_morphine:
        for t in _poisson_times(rng, rng.uniform(1, 3), enroll_ms + 5 * 60_000, depart_ms):
            meds.append(Medication(int(t), "morphine", float(rng.choice([2.0, 4.0])), "mg", "iv"))
    morphine_ms = [m.ts_ms for m in meds[morphine_start:]]
    prn("acetaminophen", 1000.0, "mg", "oral", 0.7)
    prn("ondansetron", 4.0, "mg", "iv", 0.25)
    ibuprofen_rate = 0.05 if on_warfarin else 0.3
    prn("ibuprofen", 400.0, "mg", "oral", ibuprofen_rate)
    empiric_abx_ms = int(rng.integers(enroll_ms, depart_ms)) if u[3] < 0.04 else None

    # --- adverse-event hazards (latent) -----------------------------------------------
    common = frailty * math.exp(AGE_HAZARD_PER_YEAR * (age - 60)) * cfg.hazard_scale
    common *= MONITORED_HAZARD if monitored else 1.0
    hazard = {}
    for kind in ADVERSE_EVENT_TYPES:
        h = BASE_HAZARD_PER_DAY[kind] * ARM_HAZARD[kind].get(trial_arm, 1.0) * common
        for c in comorbidities:
            h *= COMORBIDITY_HAZARD[kind].get(c, 1.0)
        hazard[kind] = h
    if on_warfarin:
        hazard[BLEED] *= 2.5 * (1.6 if on_amiodarone else 1.0)
    hazard[BLEED] *= 1.0 + 2.0 * ibuprofen_rate
    if on_amiodarone and schedule is not None:
        hazard[DILI] *= 1.5

    # Candidate onsets: Poisson per kind, plus morphine-triggered respiratory depression.
    first_onset = enroll_ms + 12 * HOUR_MS
    candidates: list[tuple[int, str, int | None]] = []  # onset, kind, trigger time
    for kind in ADVERSE_EVENT_TYPES:
        lo = first_onset + (3 * DAY_MS if kind == DILI else 0)  # DILI needs exposure
        candidates += [(int(t), kind, None) for t in _poisson_times(rng, hazard[kind], lo, depart_ms)]
    # Same multipliers (arm, age, COPD, frailty, scale) as the spontaneous hazard.
    p_resp = min(0.5, MORPHINE_RESP_DEP_PROB * hazard[RESP] / BASE_HAZARD_PER_DAY[RESP])
    for t in morphine_ms:
        if rng.random() < p_resp:
            candidates.append((t + int(rng.uniform(4, 8) * HOUR_MS), RESP, t))
    candidates.sort()

    episodes: list[Episode] = []
    for onset, kind, trigger in candidates:
        if onset >= depart_ms or onset < first_onset:
            continue
        if episodes and onset - episodes[-1].onset_ms < REFRACTORY_MS:
            continue
        grade = int(rng.choice(5, p=GRADE_PROBS[kind])) + 1
        lo_h, hi_h = LEAD_HOURS[kind]
        lead = int(rng.uniform(lo_h, hi_h) * HOUR_MS) if trigger is None else onset - trigger
        lab_lead = int(rng.uniform(*DILI_LAB_LEAD_HOURS) * HOUR_MS) if kind == DILI else lead
        tau = int(rng.uniform(8, 24) * HOUR_MS)
        lab_tau = int(rng.uniform(48, 96) * HOUR_MS) if kind == DILI else tau
        if grade >= 4 or rng.random() < 0.85:
            delay_h = min(rng.exponential(1.0 if grade >= 4 else 1.5), 3.0 if grade >= 4 else 6.0)
        else:
            delay_h = rng.uniform(24, 168)  # reported at a later visit
        death_ms = onset + int(rng.uniform(2, 36) * HOUR_MS) if grade == 5 else None
        ep = Episode(
            kind=kind,
            onset_ms=onset,
            lead_ms=lead,
            lab_lead_ms=lab_lead,
            plateau_ms=int(rng.uniform(2, 8) * HOUR_MS),
            tau_ms=tau,
            lab_tau_ms=lab_tau,
            grade=grade,
            serious=bool(grade >= 3 or rng.random() < 0.1),
            reported_ms=onset + int(delay_h * HOUR_MS),
            death_ms=death_ms,
            amp=0.6 + 0.15 * grade,
            variant=int(rng.integers(4)),
            event_id=uuids(rng, 1)[0],
        )
        episodes.append(ep)
        if death_ms is not None and death_ms < depart_ms:
            depart_ms, depart_event = death_ms, "died"
        elif grade >= 3 and rng.random() < (0.4 if grade == 4 else 0.1):
            w = onset + int(rng.uniform(12, 72) * HOUR_MS)
            if w < depart_ms:
                depart_ms, depart_event = w, "withdrawn"

    # --- treatment responses and truncation -----------------------------------------
    abx_starts = [ep.onset_ms + int(rng.uniform(0.5, 3) * HOUR_MS) for ep in episodes if ep.kind == SEPSIS]
    if empiric_abx_ms is not None:
        abx_starts.append(empiric_abx_ms)
    for start in abx_starts:
        course = int(rng.uniform(2, 7) * DAY_MS)
        for every_h, drug, dose in ((12, "vancomycin", 1.0), (8, "piperacillin-tazobactam", 4.5)):
            for t in range(start, start + course, every_h * HOUR_MS):
                meds.append(Medication(t + int(rng.uniform(0, 30) * 60_000), drug, dose, "g", "iv"))
    for ep in episodes:
        if ep.kind == SEPSIS and ep.variant & 1 == 0:  # fever -> antipyretic
            t = ep.onset_ms + int(rng.uniform(0.2, 2) * HOUR_MS)
            meds.append(Medication(t, "acetaminophen", 1000.0, "mg", "iv"))
    holds = [(ep.onset_ms, ep.onset_ms + 2 * DAY_MS if not (ep.kind == DILI and ep.grade >= 3) else 1 << 62)
             for ep in episodes if ep.grade >= 3]
    meds = [
        m for m in meds
        if enroll_ms + 60_000 <= m.ts_ms < depart_ms
        and not (m.drug == "VS-101" and any(a <= m.ts_ms < b for a, b in holds))
    ]
    meds.sort(key=lambda m: m.ts_ms)

    # --- observation schedules --------------------------------------------------------
    step = cfg.ward_vitals_interval_hours * HOUR_MS
    n_obs = int((depart_ms - enroll_ms) / (step - 20 * 60_000)) + 2
    gaps = step + rng.uniform(-20, 20, n_obs) * 60_000
    first_obs = enroll_ms + rng.uniform(0.1, 0.5) * HOUR_MS
    nurse = (first_obs + np.concatenate(([0.0], np.cumsum(gaps)))).astype(np.int64).tolist()
    for ep in episodes:  # escalation: hourly observations while deteriorating
        a = ep.onset_ms - ep.lead_ms // 2
        b = min(ep.onset_ms + ep.plateau_ms + 12 * HOUR_MS, depart_ms)
        nurse.extend(range(int(a + rng.uniform(0, 30) * 60_000), b, HOUR_MS))
    nurse_ms = np.unique(np.asarray([t for t in nurse if enroll_ms <= t < depart_ms], dtype=np.int64))

    lab_draws: list[tuple[int, tuple[int, ...]]] = []
    basic = tuple(LAB_INDEX[t] for t in ("creatinine", "potassium", "glucose", "wbc", "platelets"))
    lfts = tuple(LAB_INDEX[t] for t in ("ALT", "AST", "bilirubin"))
    lactate = (LAB_INDEX["lactate"],)
    lo_h, hi_h = cfg.lab_interval_hours
    t = enroll_ms + rng.uniform(0.5, 2) * HOUR_MS
    first = True
    while t < depart_ms:
        active = [ep for ep in episodes
                  if ep.onset_ms - ep.lab_lead_ms <= t <= ep.onset_ms + ep.plateau_ms + ep.lab_tau_ms]
        tests = basic
        if first or rng.random() < 0.6 or any(ep.kind == DILI for ep in active):
            tests += lfts
        if rng.random() < (0.5 if monitored else 0.25) or any(ep.kind in (SEPSIS, BLEED) for ep in active):
            tests += lactate
        lab_draws.append((int(t), tests))
        t += rng.uniform(lo_h, hi_h) * HOUR_MS
        first = False
    for ep in episodes:  # work-up when the team notices deterioration, and after onset
        if ep.kind in (SEPSIS, BLEED, RESP):
            for t in (ep.onset_ms - int(0.3 * ep.lead_ms), ep.onset_ms + int(rng.uniform(0.5, 2) * HOUR_MS)):
                if enroll_ms <= t < depart_ms:
                    lab_draws.append((t, basic + lactate))
    lab_draws.sort()

    # --- benign excursions: 30-90 min bumps that lead nowhere ---------------------------
    ex_t = _poisson_times(rng, cfg.excursions_per_day, enroll_ms, depart_ms)
    # Effect ranges (low, high) per kind for HR, SBP, DBP, RR, SpO2, temperature.
    lo_hi = np.array([
        [(12, 30), (5, 20), (3, 10), (1, 4), (0, 0), (0, 0)],  # pain / mobilising
        [(5, 15), (15, 30), (8, 15), (0, 2), (0, 0), (0, 0)],  # anxiety / hypertensive spike
        [(0, 8), (0, 0), (0, 0), (-2, 1), (-5, -2), (0, 0)],  # nocturnal desaturation
    ], dtype=np.float64)
    kinds = rng.integers(0, 3, len(ex_t))
    rng_lo, rng_hi = lo_hi[kinds, :, 0], lo_hi[kinds, :, 1]
    effects = rng_lo + (rng_hi - rng_lo) * rng.random((len(ex_t), 6))
    durations = rng.uniform(30, 90, len(ex_t)) * 60_000
    excursions = np.column_stack([ex_t.astype(np.float64), durations, effects]).reshape(len(ex_t), 8)

    next_enroll = None
    if cfg.replace_departed:
        next_enroll = depart_ms + int(rng.uniform(2, 24) * HOUR_MS)
        if patient_number(cfg, slot, generation + 1) > MAX_PATIENT_NUMBER:
            next_enroll = None

    return Patient(
        slot=slot,
        generation=generation,
        number=number,
        patient_id=f"PT{number:05d}",
        age=age,
        sex=sex,
        weight_kg=weight,
        height_cm=round(height, 1),
        trial_arm=trial_arm,
        site=site,
        comorbidities=comorbidities,
        monitored=monitored,
        device_id=device_id,
        tz_hours=tz,
        frailty=frailty,
        base_o2=base_o2,
        vital_base=vital_base,
        circ_amp=circ_amp,
        circ_peak_h=circ_peak_h,
        lab_base=lab_base,
        monitor_phase_ms=int(rng.integers(0, int(cfg.monitor_interval_s * 1000))),
        enroll_ms=enroll_ms,
        depart_ms=depart_ms,
        depart_event=depart_event,
        next_enroll_ms=next_enroll,
        episodes=[ep for ep in episodes if ep.onset_ms < depart_ms],
        medications=meds,
        nurse_ms=nurse_ms,
        lab_draws=lab_draws,
        excursions=excursions,
    )


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_DIGIT_POS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def uuids(rng: Generator, n: int) -> list[str]:
    """n deterministic RFC 4122 version-4 UUID strings from rng (vectorised)."""
    if n == 0:
        return []
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    nib = np.empty((n, 32), dtype=np.uint8)
    nib[:, 0::2] = raw >> 4
    nib[:, 1::2] = raw & 0x0F
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    out[:, _UUID_DIGIT_POS] = _HEX[nib]
    return out.view("S36").ravel().astype("U36").tolist()
