"""The event contract (docs/events.md) as pydantic models of the raw JSON records.

Types are strict (a number is a number, never the string "72"). Unknown extra
fields are ignored here and counted by validation; bronze keeps them verbatim.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from streams import vocab

PatientId = Annotated[str, StringConstraints(pattern=r"^PT\d{5,8}$")]
EventId = Annotated[str, StringConstraints(min_length=8, max_length=64)]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a UTC offset (e.g. 2026-01-31T12:00:00Z)")
    return value


# ISO-8601 strings are the wire format, so timestamps alone are parsed non-strictly.
Timestamp = Annotated[datetime, Field(strict=False), AfterValidator(_utc)]


def _source(value: str) -> str:
    if value in vocab.VITAL_SOURCES_FIXED or (value.startswith("device:") and len(value) > len("device:")):
        return value
    raise ValueError("source must be 'monitor', 'nurse' or 'device:<id>'")


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class VitalsIn(_Record):
    event_id: EventId
    patient_id: PatientId
    timestamp: Timestamp
    source: Annotated[str, AfterValidator(_source)]
    heart_rate: float | None = None
    bp_systolic: float | None = None
    bp_diastolic: float | None = None
    resp_rate: float | None = None
    spo2: float | None = None
    temperature: float | None = None
    temperature_unit: Literal[vocab.TEMPERATURE_UNITS] | None = None  # type: ignore[valid-type]
    consciousness: Literal[vocab.CONSCIOUSNESS_LEVELS] | None = None  # type: ignore[valid-type]
    on_oxygen: bool | None = None


class LabIn(_Record):
    event_id: EventId
    patient_id: PatientId
    timestamp: Timestamp
    test: Literal[vocab.LAB_TESTS]  # type: ignore[valid-type]
    value: float
    unit: str


class MedicationIn(_Record):
    event_id: EventId
    patient_id: PatientId
    timestamp: Timestamp
    drug: Literal[vocab.DRUGS]  # type: ignore[valid-type]
    dose: float
    unit: Literal[vocab.DOSE_UNITS]  # type: ignore[valid-type]
    route: Literal[vocab.ROUTES]  # type: ignore[valid-type]


class AdverseEventIn(_Record):
    event_id: EventId
    patient_id: PatientId
    onset_time: Timestamp
    reported_time: Timestamp
    type: Literal[vocab.ADVERSE_EVENT_TYPES]  # type: ignore[valid-type]
    severity: Annotated[int, Field(ge=1, le=5)]
    serious: bool


class PatientIn(_Record):
    patient_id: PatientId
    event: Literal[vocab.PATIENT_EVENTS]  # type: ignore[valid-type]
    timestamp: Timestamp
    age: float | None = None
    sex: Literal[vocab.SEXES] | None = None  # type: ignore[valid-type]
    weight_kg: float | None = None
    height_cm: float | None = None
    trial_arm: Literal[vocab.TRIAL_ARMS] | None = None  # type: ignore[valid-type]
    site: Literal[vocab.SITES] | None = None  # type: ignore[valid-type]
    comorbidities: list[Literal[vocab.COMORBIDITIES]] = Field(default_factory=list)  # type: ignore[valid-type]
