"""Event contract: good and bad examples per topic (streams/validation.py)."""
from __future__ import annotations

import orjson
import pytest

from streams import topics
from streams.events import CleanAdverseEvent, CleanLab, CleanMedication, CleanPatientEvent, CleanVitals
from streams.validation import Accepted, Rejection, deadletter_record, validate_record

T = "2026-03-01T12:00:00Z"
T_MS = 1772366400000
RECORD_TS = T_MS + 5_000

GOOD = {
    topics.VITALS: {"event_id": "0b5f7d2e-1c1a-4c55-9d51-3f3a7c1e9a01", "patient_id": "PT00042", "timestamp": T,
                    "source": "monitor", "heart_rate": 88, "bp_systolic": 120, "bp_diastolic": 80, "resp_rate": 16,
                    "spo2": 97, "temperature": 98.6, "temperature_unit": "F", "consciousness": "A", "on_oxygen": False},
    topics.LABS: {"event_id": "0b5f7d2e-1c1a-4c55-9d51-3f3a7c1e9a02", "patient_id": "PT00042", "timestamp": T,
                  "test": "creatinine", "value": 88.4, "unit": "umol/L"},
    topics.MEDICATIONS: {"event_id": "0b5f7d2e-1c1a-4c55-9d51-3f3a7c1e9a03", "patient_id": "PT00042",
                         "timestamp": T, "drug": "VS-101", "dose": 100, "unit": "mg", "route": "oral"},
    topics.ADVERSE_EVENTS: {"event_id": "0b5f7d2e-1c1a-4c55-9d51-3f3a7c1e9a04", "patient_id": "PT00042",
                            "onset_time": T, "reported_time": "2026-03-01T15:00:00Z", "type": "sepsis",
                            "severity": 3, "serious": True},
    topics.PATIENTS: {"patient_id": "PT00042", "event": "enrolled", "timestamp": T, "age": 64, "sex": "F",
                      "weight_kg": 70.5, "height_cm": 165, "trial_arm": "high_dose", "site": "SITE02",
                      "comorbidities": ["diabetes"]},
}
CLEAN_TYPES = {topics.VITALS: CleanVitals, topics.LABS: CleanLab, topics.MEDICATIONS: CleanMedication,
               topics.ADVERSE_EVENTS: CleanAdverseEvent, topics.PATIENTS: CleanPatientEvent}


def check(topic: str, record: dict | bytes, key: bytes | None = b"PT00042", record_ts: int = RECORD_TS):
    value = record if isinstance(record, bytes) else orjson.dumps(record)
    return validate_record(topic, key, value, record_ts)


@pytest.mark.parametrize("topic", list(GOOD))
def test_good_record_is_accepted(topic):
    result = check(topic, GOOD[topic])
    assert isinstance(result, Accepted), result
    assert isinstance(result.event, CLEAN_TYPES[topic])
    assert result.event.patient_id == "PT00042"
    assert result.extra_fields == 0


def test_vitals_standardized_and_enriched():
    ev = check(topics.VITALS, GOOD[topics.VITALS]).event
    assert ev.ts_ms == T_MS
    assert ev.temperature == pytest.approx(37.0)  # 98.6 F
    assert ev.pulse_pressure == 40
    assert ev.mean_arterial_pressure == pytest.approx(80 + 40 / 3)
    assert ev.shock_index == pytest.approx(88 / 120)
    assert ev.flags == ()


def test_partial_vitals_are_normal():
    rec = {k: GOOD[topics.VITALS][k] for k in ("event_id", "patient_id", "timestamp", "source", "heart_rate")}
    ev = check(topics.VITALS, rec).event
    assert ev.heart_rate == 88 and ev.bp_systolic is None and ev.pulse_pressure is None and ev.shock_index is None


def test_lab_units_converted_to_canonical():
    ev = check(topics.LABS, GOOD[topics.LABS]).event
    assert ev.unit == "mg/dL" and ev.value == pytest.approx(1.0)


def test_unknown_extra_fields_are_dropped_and_counted():
    result = check(topics.VITALS, {**GOOD[topics.VITALS], "ward": "7B", "firmware": "1.2"})
    assert isinstance(result, Accepted) and result.extra_fields == 2
    assert not hasattr(result.event, "ward")


def test_implausible_value_is_kept_and_flagged():
    result = check(topics.VITALS, {**GOOD[topics.VITALS], "heart_rate": 240})
    assert isinstance(result, Accepted)
    assert result.event.flags == ("heart_rate_implausible",)


def test_timestamp_with_offset_is_converted_to_utc():
    ev = check(topics.VITALS, {**GOOD[topics.VITALS], "timestamp": "2026-03-01T13:00:00+01:00"}).event
    assert ev.ts_ms == T_MS


BAD = [
    (topics.VITALS, b"{not json", "malformed_json"),
    (topics.VITALS, b"[1, 2, 3]", "not_an_object"),
    (topics.VITALS, b"x" * (64 * 1024 + 1), "oversized"),
    (topics.VITALS, {**GOOD[topics.VITALS], "heart_rate": "fast"}, "wrong_type"),
    (topics.VITALS, {**GOOD[topics.VITALS], "on_oxygen": "yes"}, "wrong_type"),
    (topics.VITALS, {k: v for k, v in GOOD[topics.VITALS].items() if k != "patient_id"}, "missing_field"),
    (topics.VITALS, {k: v for k, v in GOOD[topics.VITALS].items() if k != "event_id"}, "missing_field"),
    (topics.VITALS, {**GOOD[topics.VITALS], "timestamp": "yesterday"}, "bad_timestamp"),
    (topics.VITALS, {**GOOD[topics.VITALS], "timestamp": "2026-03-01T12:00:00"}, "bad_timestamp"),
    (topics.VITALS, {**GOOD[topics.VITALS], "timestamp": "2026-03-02T12:00:00Z"}, "future_timestamp"),
    (topics.VITALS, {**GOOD[topics.VITALS], "heart_rate": 900}, "out_of_range"),
    (topics.VITALS, {**GOOD[topics.VITALS], "spo2": 101}, "out_of_range"),
    (topics.VITALS, {**GOOD[topics.VITALS], "temperature": 98.6, "temperature_unit": "C"}, "out_of_range"),
    (topics.VITALS, {k: v for k, v in GOOD[topics.VITALS].items() if k != "temperature_unit"}, "missing_field"),
    (topics.VITALS, {**GOOD[topics.VITALS], "bp_diastolic": 130}, "inconsistent"),
    (topics.VITALS, {**GOOD[topics.VITALS], "consciousness": "Z"}, "invalid_value"),
    (topics.VITALS, {**GOOD[topics.VITALS], "source": "fax"}, "invalid_value"),
    (topics.VITALS, {**GOOD[topics.VITALS], "patient_id": "42"}, "invalid_value"),
    (topics.LABS, {**GOOD[topics.LABS], "test": "unobtainium"}, "invalid_value"),
    (topics.LABS, {**GOOD[topics.LABS], "unit": "furlongs"}, "invalid_value"),
    (topics.LABS, {**GOOD[topics.LABS], "value": -1}, "out_of_range"),
    (topics.MEDICATIONS, {**GOOD[topics.MEDICATIONS], "dose": 0}, "out_of_range"),
    (topics.MEDICATIONS, {**GOOD[topics.MEDICATIONS], "route": "nasal-spray"}, "invalid_value"),
    (topics.ADVERSE_EVENTS, {**GOOD[topics.ADVERSE_EVENTS], "severity": 7}, "out_of_range"),
    (topics.ADVERSE_EVENTS, {**GOOD[topics.ADVERSE_EVENTS], "severity": "3"}, "wrong_type"),
    (topics.ADVERSE_EVENTS, {**GOOD[topics.ADVERSE_EVENTS], "reported_time": "2026-03-01T11:00:00Z"}, "inconsistent"),
    (topics.PATIENTS, {**GOOD[topics.PATIENTS], "event": "teleported"}, "invalid_value"),
    (topics.PATIENTS, {**GOOD[topics.PATIENTS], "age": 300}, "out_of_range"),
    (topics.PATIENTS, {**GOOD[topics.PATIENTS], "comorbidities": "diabetes"}, "wrong_type"),
]


@pytest.mark.parametrize(("topic", "record", "reason"), BAD)
def test_bad_record_is_rejected_with_reason(topic, record, reason):
    result = check(topic, record)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.detail


def test_key_must_match_patient_id():
    result = check(topics.VITALS, GOOD[topics.VITALS], key=b"PT99999")
    assert isinstance(result, Rejection) and result.reason == "key_mismatch"


def test_deadletter_keeps_original_payload_and_provenance():
    raw = b"\xff\xfe not utf-8"
    rej = validate_record(topics.VITALS, b"PT00042", raw, RECORD_TS)
    dl = orjson.loads(deadletter_record(rej, topic=topics.VITALS, partition=3, offset=17, key=b"PT00042", value=raw,
                                        record_ts_ms=RECORD_TS))
    assert dl["reason"] == "malformed_json"
    assert (dl["source_topic"], dl["source_partition"], dl["source_offset"]) == (topics.VITALS, 3, 17)
    import base64

    assert base64.b64decode(dl["payload"]) == raw and dl["payload_encoding"] == "base64"
