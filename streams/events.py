"""Clean (silver) event records: what validation emits and the features consume.

Timestamps are integer epoch milliseconds (UTC event time); measurements are in
canonical units (temperature in degrees C, labs in LAB_CANONICAL_UNITS). Fields a
record did not carry are ``None``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class CleanVitals:
    event_id: str
    patient_id: str
    ts_ms: int
    source: str
    heart_rate: float | None = None
    bp_systolic: float | None = None
    bp_diastolic: float | None = None
    resp_rate: float | None = None
    spo2: float | None = None
    temperature: float | None = None  # degrees C
    consciousness: str | None = None  # ACVPU letter
    on_oxygen: bool | None = None
    # Instantaneous enrichment (silver): None where an input is missing.
    pulse_pressure: float | None = None
    mean_arterial_pressure: float | None = None
    shock_index: float | None = None
    flags: tuple[str, ...] = ()  # implausible-but-possible values, e.g. "heart_rate_implausible"

    kind = "vitals"


@dataclass(slots=True)
class CleanLab:
    event_id: str
    patient_id: str
    ts_ms: int
    test: str
    value: float  # canonical unit
    unit: str  # canonical unit
    flags: tuple[str, ...] = ()

    kind = "labs"


@dataclass(slots=True)
class CleanMedication:
    event_id: str
    patient_id: str
    ts_ms: int
    drug: str
    dose: float
    unit: str
    route: str

    kind = "medications"


@dataclass(slots=True)
class CleanAdverseEvent:
    event_id: str
    patient_id: str
    onset_ms: int
    reported_ms: int
    type: str
    severity: int  # CTCAE grade 1-5
    serious: bool

    kind = "adverse_events"


@dataclass(slots=True)
class CleanPatientEvent:
    patient_id: str
    event: str  # enrolled | discharged | withdrawn | died
    ts_ms: int
    age: float | None = None
    sex: str | None = None
    weight_kg: float | None = None
    height_cm: float | None = None
    trial_arm: str | None = None
    site: str | None = None
    comorbidities: tuple[str, ...] = field(default_factory=tuple)

    kind = "patients"


CleanEvent = CleanVitals | CleanLab | CleanMedication | CleanAdverseEvent | CleanPatientEvent


def event_time_ms(event: CleanEvent) -> int:
    """When the event happened: an adverse event's onset, any other event's timestamp."""
    return event.onset_ms if isinstance(event, CleanAdverseEvent) else event.ts_ms

