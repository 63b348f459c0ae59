"""Controlled vocabularies of the event contract (docs/events.md).

The simulator emits these values, validation enforces them and the feature
registry encodes them, so each list is defined exactly once, here.
"""
from __future__ import annotations

VITAL_SIGNALS: tuple[str, ...] = (
    "heart_rate",
    "bp_systolic",
    "bp_diastolic",
    "resp_rate",
    "spo2",
    "temperature",
)

VITAL_SOURCES_FIXED: tuple[str, ...] = ("monitor", "nurse")  # plus "device:<id>"
CONSCIOUSNESS_LEVELS: tuple[str, ...] = ("A", "C", "V", "P", "U")  # ACVPU
TEMPERATURE_UNITS: tuple[str, ...] = ("C", "F")

# Lab test -> canonical unit, and accepted variant units with the factor that
# converts a variant value to the canonical unit (canonical = value * factor).
LAB_CANONICAL_UNITS: dict[str, str] = {
    "ALT": "U/L",
    "AST": "U/L",
    "bilirubin": "mg/dL",
    "creatinine": "mg/dL",
    "lactate": "mmol/L",
    "wbc": "10^9/L",
    "platelets": "10^9/L",
    "glucose": "mg/dL",
    "potassium": "mmol/L",
}
LAB_UNIT_CONVERSIONS: dict[str, dict[str, float]] = {
    "bilirubin": {"umol/L": 1 / 17.1},
    "creatinine": {"umol/L": 1 / 88.4},
    "glucose": {"mmol/L": 18.0},
}
LAB_TESTS: tuple[str, ...] = tuple(LAB_CANONICAL_UNITS)

# Medications: the study drug plus common concomitant drugs.
DRUGS: tuple[str, ...] = (
    "VS-101",  # investigational product
    "acetaminophen",
    "ondansetron",
    "morphine",
    "warfarin",
    "amiodarone",
    "ibuprofen",
    "vancomycin",
    "piperacillin-tazobactam",
)
DOSE_UNITS: tuple[str, ...] = ("mg", "g", "mcg", "units")
ROUTES: tuple[str, ...] = ("oral", "iv", "sc", "im")
# Pairs with a clinically relevant interaction (either order).
INTERACTING_DRUG_PAIRS: tuple[tuple[str, str], ...] = (
    ("warfarin", "amiodarone"),
    ("warfarin", "ibuprofen"),
    ("vancomycin", "piperacillin-tazobactam"),
    ("VS-101", "amiodarone"),
)

ADVERSE_EVENT_TYPES: tuple[str, ...] = (
    "sepsis",
    "drug_induced_liver_injury",
    "hypotension_bleeding",
    "respiratory_depression",
)

PATIENT_EVENTS: tuple[str, ...] = ("enrolled", "discharged", "withdrawn", "died")
SEXES: tuple[str, ...] = ("F", "M")
TRIAL_ARMS: tuple[str, ...] = ("placebo", "low_dose", "high_dose")
SITES: tuple[str, ...] = ("SITE01", "SITE02", "SITE03", "SITE04", "SITE05")
COMORBIDITIES: tuple[str, ...] = (
    "hypertension",
    "diabetes",
    "copd",
    "ckd",
    "heart_failure",
    "liver_disease",
)
