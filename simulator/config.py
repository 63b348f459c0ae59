"""Simulation configuration and topic names."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Mapping


def _topic(attr_names: tuple[str, ...], default: str) -> str:
    """Topic name from streams.topics when that module defines it, else the literal."""
    try:
        from streams import topics  # type: ignore[attr-defined]
    except ImportError:
        return default
    for name in attr_names:
        value = getattr(topics, name, None)
        if isinstance(value, str) and value:
            return value
    return default


TOPIC_VITALS = _topic(("VITALS", "CLINICAL_VITALS", "VITALS_TOPIC"), "clinical.vitals")
TOPIC_LABS = _topic(("LABS", "CLINICAL_LABS", "LABS_TOPIC"), "clinical.labs")
TOPIC_MEDICATIONS = _topic(
    ("MEDICATIONS", "CLINICAL_MEDICATIONS", "MEDICATIONS_TOPIC"), "clinical.medications"
)
TOPIC_ADVERSE_EVENTS = _topic(
    ("ADVERSE_EVENTS", "CLINICAL_ADVERSE_EVENTS", "ADVERSE_EVENTS_TOPIC"), "clinical.adverse_events"
)
TOPIC_PATIENTS = _topic(("PATIENTS", "CLINICAL_PATIENTS", "PATIENTS_TOPIC"), "clinical.patients")
TOPICS: tuple[str, ...] = (
    TOPIC_VITALS,
    TOPIC_LABS,
    TOPIC_MEDICATIONS,
    TOPIC_ADVERSE_EVENTS,
    TOPIC_PATIENTS,
)

# Fault kinds in the canonical order used in SimRecord.fault ("fahrenheit+late").
FAULT_KINDS: tuple[str, ...] = (
    "malformed",
    "artifact",
    "fahrenheit",
    "variant_unit",
    "out_of_order",
    "late",
    "duplicate",
)

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DoseSchedule:
    """Scheduled study-drug dosing for one trial arm."""

    dose_mg: float
    interval_hours: float
    first_hour_local: float = 9.0  # first dose of the day, site-local clock
    route: str = "oral"


DEFAULT_DOSING: Mapping[str, DoseSchedule] = MappingProxyType(
    {
        "low_dose": DoseSchedule(dose_mg=100.0, interval_hours=24.0),
        "high_dose": DoseSchedule(dose_mg=200.0, interval_hours=12.0),
    }
)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Everything that determines the output: same config => byte-identical records."""

    seed: int = 42
    n_patients: int = 50  # concurrent census (bed slots); departed patients are replaced
    start: datetime = DEFAULT_START  # timezone-aware UTC
    days: float | None = 7.0  # None: unbounded (live mode)
    fraction_monitored: float = 0.3  # bedside monitor, vitals every 60 s
    monitor_interval_s: float = 60.0
    ward_vitals_interval_hours: float = 4.0  # nurse observations (all patients)
    fraction_device: float = 0.2  # ward patients with a wearable (HR/SpO2/RR)
    device_interval_minutes: float = 15.0
    lab_interval_hours: tuple[float, float] = (12.0, 24.0)
    dosing: Mapping[str, DoseSchedule] = field(default_factory=lambda: DEFAULT_DOSING)
    enrollment_window_hours: float | None = None  # None: min(48 h, duration / 4)
    median_stay_days: float = 14.0
    replace_departed: bool = True  # refill a bed slot after discharge/withdrawal/death
    hazard_scale: float = 1.0  # multiplies every adverse-event hazard
    excursions_per_day: float = 1.5  # benign transient bumps
    # Fault rates (probabilities per record, missing per field).
    missing_rate: float = 0.10
    artifact_rate: float = 0.005
    duplicate_rate: float = 0.01
    out_of_order_rate: float = 0.02
    late_rate: float = 0.005
    fahrenheit_rate: float = 0.05
    variant_unit_rate: float = 0.10
    malformed_rate: float = 0.002

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0):
            raise ValueError("start must be a timezone-aware UTC datetime")
        if self.n_patients < 1:
            raise ValueError("n_patients must be >= 1")
        if self.days is not None and self.days <= 0:
            raise ValueError("days must be > 0 or None")
        for f in FAULT_RATE_FIELDS + ("fraction_monitored", "fraction_device"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"{f} must be within [0, 1]")

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int | None:
        """Exclusive end of event and arrival time; None when unbounded."""
        if self.days is None:
            return None
        return self.start_ms + int(self.days * 86_400_000)

    @property
    def enrollment_window_ms(self) -> int:
        if self.enrollment_window_hours is not None:
            return int(self.enrollment_window_hours * 3_600_000)
        if self.days is None:
            return 600_000  # live: the whole census enrolls within the first 10 minutes
        return int(min(48.0, self.days * 24.0 / 4.0) * 3_600_000)

    def without_faults(self) -> "SimulationConfig":
        """Same cohort and physiology, with every fault rate set to zero."""
        return dataclasses.replace(self, **{f: 0.0 for f in FAULT_RATE_FIELDS})


FAULT_RATE_FIELDS: tuple[str, ...] = (
    "missing_rate",
    "artifact_rate",
    "duplicate_rate",
    "out_of_order_rate",
    "late_rate",
    "fahrenheit_rate",
    "variant_unit_rate",
    "malformed_rate",
)
