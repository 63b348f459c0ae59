"""Silver validation: one raw Kafka record in, a clean event or a rejection out.

Validation is a pure function of the record (its bytes, key and Kafka timestamp),
never of the wall clock, so live processing and replay decide identically.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from streams import contract, ranges, topics, vocab
from streams.events import (
    CleanAdverseEvent,
    CleanEvent,
    CleanLab,
    CleanMedication,
    CleanPatientEvent,
    CleanVitals,
    event_time_ms,
)

MAX_RECORD_BYTES = 64 * 1024
# An event may not claim to be from the future relative to when Kafka received it (clock skew allowance).
MAX_FUTURE_SKEW_MS = 10 * 60 * 1000

# Reason codes of rejected records (dead letters). Each has a counter metric.
REASONS: tuple[str, ...] = (
    "oversized", "malformed_json", "not_an_object", "missing_field", "wrong_type", "invalid_value",
    "bad_timestamp", "future_timestamp", "out_of_range", "inconsistent", "key_mismatch", "unknown_topic",
    "late_event", "processing_error",
)

_MODELS: dict[str, type[BaseModel]] = {
    topics.VITALS: contract.VitalsIn,
    topics.LABS: contract.LabIn,
    topics.MEDICATIONS: contract.MedicationIn,
    topics.ADVERSE_EVENTS: contract.AdverseEventIn,
    topics.PATIENTS: contract.PatientIn,
}
_FIELDS = {topic: frozenset(model.model_fields) for topic, model in _MODELS.items()}
_TIMESTAMP_FIELDS = frozenset({"timestamp", "onset_time", "reported_time"})
_TYPE_ERRORS = frozenset({"float_type", "int_type", "bool_type", "string_type", "list_type", "dict_type",
                          "int_from_float", "float_parsing", "int_parsing", "bool_parsing", "model_type"})


@dataclass(slots=True, frozen=True)
class Rejection:
    reason: str
    detail: str


@dataclass(slots=True, frozen=True)
class Accepted:
    event: CleanEvent
    extra_fields: int  # unknown fields dropped by silver (kept by bronze)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def _ms(ts: datetime) -> int:
    # Integer arithmetic: float epoch seconds would round sub-millisecond parts differently.
    return (ts - _EPOCH) // _ONE_MS


def _reason_for(error: dict[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "missing":
        return "missing_field"
    if loc and loc[0] in _TIMESTAMP_FIELDS:
        return "bad_timestamp"
    if kind in _TYPE_ERRORS:
        return "wrong_type"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        return "out_of_range"
    return "invalid_value"


def _check_range(name: str, value: float | None, rng: ranges.Range, flags: list[str]) -> Rejection | None:
    if value is None:
        return None
    if value != value or not rng.possible[0] <= value <= rng.possible[1]:  # NaN never passes
        return Rejection("out_of_range", f"{name}={value} outside possible range {rng.possible}")
    if not rng.plausible[0] <= value <= rng.plausible[1]:
        flags.append(f"{name}_implausible")
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


_VITAL_RANGES = tuple((name, ranges.VITAL_RANGES[name]) for name in vocab.VITAL_SIGNALS)  # `values`' order


def _vitals(rec: contract.VitalsIn) -> CleanVitals | Rejection:
    temperature = rec.temperature
    if temperature is not None:
        if rec.temperature_unit is None:
            return Rejection("missing_field", "temperature given without temperature_unit")
        if rec.temperature_unit == "F":
            temperature = (temperature - 32.0) * 5.0 / 9.0
    values = (rec.heart_rate, rec.bp_systolic, rec.bp_diastolic, rec.resp_rate, rec.spo2, temperature)
    flags: list[str] = []
    for (name, rng), value in zip(_VITAL_RANGES, values):
        if (bad := _check_range(name, value, rng, flags)) is not None:
            return bad
    sbp, dbp, hr = rec.bp_systolic, rec.bp_diastolic, rec.heart_rate
    if sbp is not None and dbp is not None and dbp > sbp:
        return Rejection("inconsistent", f"bp_diastolic={dbp} above bp_systolic={sbp}")
    return CleanVitals(
        event_id=rec.event_id, patient_id=rec.patient_id, ts_ms=_ms(rec.timestamp), source=rec.source,
        heart_rate=hr, bp_systolic=sbp, bp_diastolic=dbp, resp_rate=rec.resp_rate, spo2=rec.spo2,
        temperature=temperature, consciousness=rec.consciousness, on_oxygen=rec.on_oxygen,
        pulse_pressure=sbp - dbp if sbp is not None and dbp is not None else None,
        mean_arterial_pressure=dbp + (sbp - dbp) / 3.0 if sbp is not None and dbp is not None else None,
        shock_index=_ratio(hr, sbp), flags=tuple(flags),
    )


def _lab(rec: contract.LabIn) -> CleanLab | Rejection:
    canonical = vocab.LAB_CANONICAL_UNITS[rec.test]
    value = rec.value
    if rec.unit != canonical:
        factor = vocab.LAB_UNIT_CONVERSIONS.get(rec.test, {}).get(rec.unit)
        if factor is None:
            return Rejection("invalid_value", f"unit {rec.unit!r} not known for {rec.test} (canonical {canonical})")
        value = value * factor
    flags: list[str] = []
    if (bad := _check_range(rec.test, value, ranges.LAB_RANGES[rec.test], flags)) is not None:
        return bad
    return CleanLab(rec.event_id, rec.patient_id, _ms(rec.timestamp), rec.test, value, canonical, tuple(flags))


def _medication(rec: contract.MedicationIn) -> CleanMedication | Rejection:
    if not rec.dose > 0 or rec.dose > ranges.DOSE_RANGE.possible[1]:
        return Rejection("out_of_range", f"dose={rec.dose} must be positive and below {ranges.DOSE_RANGE.possible[1]}")
    return CleanMedication(rec.event_id, rec.patient_id, _ms(rec.timestamp), rec.drug, rec.dose, rec.unit, rec.route)


def _adverse_event(rec: contract.AdverseEventIn) -> CleanAdverseEvent | Rejection:
    onset, reported = _ms(rec.onset_time), _ms(rec.reported_time)
    if reported < onset:
        return Rejection("inconsistent", "reported_time before onset_time")
    return CleanAdverseEvent(rec.event_id, rec.patient_id, onset, reported, rec.type, rec.severity, rec.serious)


def _patient(rec: contract.PatientIn) -> CleanPatientEvent | Rejection:
    for name, value, rng in (("age", rec.age, ranges.AGE_RANGE), ("weight_kg", rec.weight_kg, ranges.WEIGHT_RANGE),
                             ("height_cm", rec.height_cm, ranges.HEIGHT_RANGE)):
        if (bad := _check_range(name, value, rng, [])) is not None:
            return bad
    return CleanPatientEvent(rec.patient_id, rec.event, _ms(rec.timestamp), rec.age, rec.sex, rec.weight_kg,
                             rec.height_cm, rec.trial_arm, rec.site, tuple(rec.comorbidities))


_BUILDERS = {
    topics.VITALS: _vitals, topics.LABS: _lab, topics.MEDICATIONS: _medication,
    topics.ADVERSE_EVENTS: _adverse_event, topics.PATIENTS: _patient,
}


def validate_record(topic: str, key: bytes | None, value: bytes | None, record_ts_ms: int) -> Accepted | Rejection:
    """Validate, standardize and enrich one raw record of a clinical.* topic."""
    model = _MODELS.get(topic)
    if model is None:
        return Rejection("unknown_topic", f"no contract for topic {topic!r}")
    if value is None:
        return Rejection("malformed_json", "empty record value")
    if len(value) > MAX_RECORD_BYTES:
        return Rejection("oversized", f"{len(value)} bytes > {MAX_RECORD_BYTES}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("malformed_json", str(exc)[:200])
    if not isinstance(data, dict):
        return Rejection("not_an_object", f"top-level JSON is {type(data).__name__}, expected an object")
    try:
        rec = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(map(str, first["loc"])) or "(record)"
        return Rejection(_reason_for(first), f"{field}: {first['msg']}")
    if key is not None and key.decode("utf-8", "replace") != rec.patient_id:
        return Rejection("key_mismatch", f"Kafka key {key[:40]!r} differs from patient_id {rec.patient_id}")
    clean = _BUILDERS[topic](rec)
    if isinstance(clean, Rejection):
        return clean
    event_ms = event_time_ms(clean)
    if event_ms > record_ts_ms + MAX_FUTURE_SKEW_MS:
        return Rejection("future_timestamp", f"event time is {(event_ms - record_ts_ms) / 1000:.0f} s after Kafka received it")
    extra = len(data.keys() - _FIELDS[topic])
    return Accepted(clean, extra)


def deadletter_record(rejection: Rejection, *, topic: str, partition: int, offset: int, key: bytes | None,
                      value: bytes | None, record_ts_ms: int) -> bytes:
    """The clinical.deadletter value: the original payload plus reason, detail and provenance."""
    payload: dict[str, Any] = {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "source_timestamp_ms": record_ts_ms,
        "key": key.decode("utf-8", "replace") if key is not None else None,
    }
    try:
        payload["payload"] = (value or b"").decode("utf-8")
        payload["payload_encoding"] = "utf-8"
    except UnicodeDecodeError:
        payload["payload"] = base64.b64encode(value or b"").decode()
        payload["payload_encoding"] = "base64"
    return orjson.dumps(payload)
