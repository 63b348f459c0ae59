"""Point-in-time labels (model/labels.py, docs/labels.md): hand-built timelines, boundaries, a reference loop."""
from __future__ import annotations

import bisect
import uuid
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.labels import (
    HORIZON_MS,
    Labels,
    OutcomeCollector,
    Outcomes,
    collect_outcomes,
    label_rows,
)
from streams import topics
from streams.events import CleanAdverseEvent, CleanPatientEvent, CleanVitals
from streams.validation import Accepted, Rejection, validate_record

H = 3600 * 1000
T0 = 1772366400000  # 2026-03-01T12:00:00Z


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


# --- raw records through the live validation code, as a Kafka replay sees them -------------------------------
def ae_record(patient: str, onset: int, reported: int | None = None, severity: int = 3,
              event_id: str | None = None) -> tuple[str, bytes, bytes, int]:
    reported = onset + H if reported is None else reported
    value = {"event_id": event_id or str(uuid.uuid4()), "patient_id": patient, "onset_time": iso(onset),
             "reported_time": iso(reported), "type": "sepsis", "severity": severity, "serious": severity >= 3}
    return topics.ADVERSE_EVENTS, patient.encode(), orjson.dumps(value), reported  # Kafka receives it when reported


def patient_record(patient: str, event: str, ts: int) -> tuple[str, bytes, bytes, int]:
    value = {"patient_id": patient, "event": event, "timestamp": iso(ts), "age": 60, "sex": "M"}
    return topics.PATIENTS, patient.encode(), orjson.dumps(value), ts


def replay(records, data_end_ms: int | None, min_grade: int = 1) -> Outcomes:
    collector = OutcomeCollector(min_grade)
    for topic, key, value, record_ts in records:
        result = validate_record(topic, key, value, record_ts)
        assert isinstance(result, Accepted), result
        collector.add(result.event)
    return collector.outcomes(data_end_ms)


def label_one(outcomes: Outcomes, patient: str, times, horizon_ms: int = HORIZON_MS) -> Labels:
    times = np.asarray(times, dtype=np.int64)
    return label_rows(np.array([patient] * len(times), dtype=object), times, outcomes, horizon_ms)


# --- reference: one row at a time, straight from the definition --------------------------------------------
def reference(patient_ids, ts_ms, outcomes: Outcomes, horizon_ms: int = HORIZON_MS):
    reasons, onsets = [], []
    data_end = outcomes.data_end_ms
    for pid, t in zip(patient_ids.tolist(), ts_ms.tolist()):
        on = outcomes.onsets.get(pid, [])
        end = min(outcomes.end_ms.get(pid, data_end), data_end)
        i = bisect.bisect_right(on, t)
        nxt = on[i] if i < len(on) and on[i] <= t + horizon_ms else -1
        if on and t >= on[0]:
            reasons.append("after_first_event")
        elif nxt != -1:
            reasons.append("positive")
        elif t + horizon_ms <= end:
            reasons.append("negative")
        else:
            reasons.append("censored")
        onsets.append(nxt)
    return reasons, onsets


def assert_matches_reference(pids, ts, outcomes, horizon_ms):
    got = label_rows(pids, ts, outcomes, horizon_ms)
    reasons, onsets = reference(pids, ts, outcomes, horizon_ms)
    assert got.reason.tolist() == reasons
    assert got.onset_ms.tolist() == onsets
    assert got.label.dtype == np.int8 and got.included.dtype == bool and got.onset_ms.dtype == np.int64
    assert got.label.tolist() == [int(r == "positive") for r in reasons]
    assert got.included.tolist() == [r in ("positive", "negative") for r in reasons]


# --- hand-built timelines ----------------------------------------------------------------------------------
def test_patient_with_two_events_a_late_report_a_duplicate_and_discharge():
    """PT00001: AE1 onset T0+48h (reported 5 days late, delivered twice), AE2 onset T0+100h, discharged T0+200h."""
    p = "PT00001"
    ae1 = ae_record(p, T0 + 48 * H, reported=T0 + 168 * H, event_id="11111111-1111-4111-8111-111111111111")
    records = [
        patient_record(p, "enrolled", T0),
        ae1,
        ae1,  # producer retry: the same report again
        ae_record(p, T0 + 100 * H),
        patient_record(p, "discharged", T0 + 200 * H),
    ]
    out = replay(records, data_end_ms=T0 + 400 * H)
    assert out.onsets == {p: [T0 + 48 * H, T0 + 100 * H]}
    assert out.end_ms == {p: T0 + 200 * H}

    times = [T0, T0 + 23 * H, T0 + 24 * H, T0 + 30 * H, T0 + 48 * H, T0 + 80 * H, T0 + 190 * H]
    lab = label_one(out, p, times)
    assert lab.reason.tolist() == ["negative", "negative", "positive", "positive",
                                   "after_first_event", "after_first_event", "after_first_event"]
    assert lab.label.tolist() == [0, 0, 1, 1, 0, 0, 0]
    assert lab.included.tolist() == [True, True, True, True, False, False, False]
    # T0+80h has the second event (T0+100h) within 24 h, but it is after the first event: excluded, onset still given.
    assert lab.onset_ms.tolist() == [-1, -1, T0 + 48 * H, T0 + 48 * H, -1, T0 + 100 * H, -1]


def test_late_reported_event_counts_by_onset_not_report():
    p = "PT00002"
    onset = T0 + 30 * H
    out = replay([ae_record(p, onset, reported=onset + 7 * 24 * H)], data_end_ms=T0 + 30 * 24 * H)
    lab = label_one(out, p, [onset - 24 * H - 1, onset - 24 * H, onset - 1])
    assert lab.reason.tolist() == ["negative", "positive", "positive"]
    assert lab.onset_ms.tolist() == [-1, onset, onset]


@pytest.mark.parametrize("end_event", ["discharged", "withdrawn", "died"])
def test_censored_at_end_of_observation(end_event):
    p = "PT00003"
    end = T0 + 100 * H
    out = replay([patient_record(p, "enrolled", T0), patient_record(p, end_event, end)], data_end_ms=T0 + 1000 * H)
    lab = label_one(out, p, [end - 24 * H - 1, end - 24 * H, end - 24 * H + 1, end - 1, end + H])
    assert lab.reason.tolist() == ["negative", "negative", "censored", "censored", "censored"]
    assert lab.label.tolist() == [0, 0, 0, 0, 0]
    assert lab.included.tolist() == [True, True, False, False, False]


def test_earliest_end_event_wins():
    p = "PT00004"
    out = replay([patient_record(p, "withdrawn", T0 + 50 * H), patient_record(p, "died", T0 + 60 * H)],
                 data_end_ms=T0 + 1000 * H)
    assert out.end_ms == {p: T0 + 50 * H}
    out = collect_outcomes([CleanPatientEvent(p, "died", T0 + 60 * H), CleanPatientEvent(p, "withdrawn", T0 + 50 * H)],
                           T0 + 1000 * H)
    assert out.end_ms == {p: T0 + 50 * H}


def test_patient_without_events_or_end_is_negative_until_data_end_minus_horizon():
    p = "PT00005"
    data_end = T0 + 72 * H
    out = replay([patient_record(p, "enrolled", T0)], data_end_ms=data_end)
    assert out.onsets == {} and out.end_ms == {}
    lab = label_one(out, p, [T0, data_end - 24 * H, data_end - 24 * H + 1, data_end, data_end + H])
    assert lab.reason.tolist() == ["negative", "negative", "censored", "censored", "censored"]


def test_rows_of_a_patient_never_seen_in_the_outcomes():
    out = Outcomes(onsets={}, end_ms={}, data_end_ms=T0 + 48 * H)
    lab = label_one(out, "PT09999", [T0, T0 + 30 * H])
    assert lab.reason.tolist() == ["negative", "censored"]


def test_data_end_censors_before_patient_end():
    p = "PT00006"
    out = Outcomes(onsets={}, end_ms={p: T0 + 100 * H}, data_end_ms=T0 + 50 * H)
    lab = label_one(out, p, [T0 + 26 * H, T0 + 27 * H])
    assert lab.reason.tolist() == ["negative", "censored"]


def test_positive_beats_censoring_near_the_end():
    """Onset before discharge but horizon past it: the event was observed, so the row is positive."""
    p = "PT00007"
    out = Outcomes(onsets={p: [T0 + 10 * H]}, end_ms={p: T0 + 12 * H}, data_end_ms=T0 + 1000 * H)
    lab = label_one(out, p, [T0 + 5 * H, T0 + 9 * H])
    assert lab.reason.tolist() == ["positive", "positive"]


def test_onset_after_discharge_still_counts():
    """A late report of an event with onset after discharge: an onset is an onset (docs/labels.md)."""
    p = "PT00008"
    discharge, onset = T0 + 100 * H, T0 + 110 * H
    out = replay([patient_record(p, "discharged", discharge), ae_record(p, onset, reported=onset + 48 * H)],
                 data_end_ms=T0 + 1000 * H)
    lab = label_one(out, p, [onset - 24 * H - 1, onset - 24 * H, discharge - 1, discharge + H, onset])
    # onset-24h-1 = T0+86h-1ms: horizon ends at T0+110h-1ms > discharge, no onset in it -> censored.
    assert lab.reason.tolist() == ["censored", "positive", "positive", "positive", "after_first_event"]


def test_boundaries_open_at_t_closed_at_t_plus_horizon():
    p = "PT00009"
    onset = T0 + 100 * H
    out = Outcomes(onsets={p: [onset]}, end_ms={}, data_end_ms=T0 + 1000 * H)
    lab = label_one(out, p, [onset - HORIZON_MS - 1, onset - HORIZON_MS, onset - 1, onset, onset + 1])
    assert lab.reason.tolist() == ["negative", "positive", "positive", "after_first_event", "after_first_event"]
    assert lab.onset_ms.tolist() == [-1, onset, onset, -1, -1]


def test_boundary_data_end_exactly_at_t_plus_horizon_is_observed():
    out = Outcomes(onsets={}, end_ms={"A": T0 + 24 * H}, data_end_ms=T0 + 24 * H)
    assert label_one(out, "A", [T0, T0 + 1]).reason.tolist() == ["negative", "censored"]


def test_min_grade_filters_events():
    p = "PT00010"
    records = [ae_record(p, T0 + 10 * H, severity=1), ae_record(p, T0 + 50 * H, severity=3),
               ae_record(p, T0 + 90 * H, severity=5)]
    assert replay(records, T0 + 1000 * H).onsets[p] == [T0 + 10 * H, T0 + 50 * H, T0 + 90 * H]
    assert replay(records, T0 + 1000 * H, min_grade=3).onsets[p] == [T0 + 50 * H, T0 + 90 * H]
    out = replay(records, T0 + 1000 * H, min_grade=4)
    assert out.onsets[p] == [T0 + 90 * H]
    # The grade-1 and grade-3 events do not exist for this labelling: rows before them are negatives.
    lab = label_one(out, p, [T0, T0 + 40 * H, T0 + 70 * H])
    assert lab.reason.tolist() == ["negative", "negative", "positive"]
    with pytest.raises(ValueError):
        OutcomeCollector(min_grade=0)
    with pytest.raises(ValueError):
        OutcomeCollector(min_grade=6)


def test_collector_dedups_by_event_id_and_ignores_other_events():
    ae = CleanAdverseEvent("e1", "A", T0, T0 + H, "sepsis", 2, False)
    again = CleanAdverseEvent("e1", "A", T0, T0 + H, "sepsis", 2, False)
    same_onset_other_report = CleanAdverseEvent("e2", "A", T0, T0 + 2 * H, "hypotension_bleeding", 2, False)
    vitals = CleanVitals("v1", "A", T0 + 5 * H, "nurse", heart_rate=80.0)
    collector = OutcomeCollector()
    for ev in (ae, again, same_onset_other_report, vitals, Accepted(vitals, 0), Rejection("late_event", "x"),
               CleanPatientEvent("A", "enrolled", T0 - H)):
        collector.add(ev)
    assert collector.duplicates == 1
    out = collector.outcomes()
    assert out.onsets == {"A": [T0]}  # sorted unique onsets
    assert out.end_ms == {}  # enrolment does not end observation
    assert out.data_end_ms == T0 + 5 * H  # default: the latest event time seen
    assert collector.outcomes(T0 + 9 * H).data_end_ms == T0 + 9 * H


def test_duplicate_first_delivery_wins_for_grade():
    first = CleanAdverseEvent("e1", "A", T0, T0 + H, "sepsis", 2, False)
    conflicting = CleanAdverseEvent("e1", "A", T0, T0 + H, "sepsis", 4, True)
    assert collect_outcomes([first, conflicting], T0, min_grade=3).onsets == {}
    assert collect_outcomes([conflicting, first], T0, min_grade=3).onsets == {"A": [T0]}


def test_collect_outcomes_without_events():
    out = collect_outcomes([], None)
    assert out == Outcomes({}, {}, None)
    with pytest.raises(ValueError, match="data_end_ms"):
        label_rows(np.array(["A"]), np.array([T0]), out)


def test_several_patients_interleaved_in_any_order():
    out = Outcomes(onsets={"A": [T0 + 30 * H], "B": [T0 + 5 * H, T0 + 60 * H]}, end_ms={"C": T0 + 20 * H},
                   data_end_ms=T0 + 100 * H)
    pids = np.array(["B", "A", "C", "A", "B", "C", "D", "B"], dtype=object)
    ts = np.array([T0, T0 + 10 * H, T0, T0 + 2 * H, T0 + 10 * H, T0 - 10 * H, T0 + 90 * H, T0 + 5 * H])
    lab = label_rows(pids, ts, out)
    assert lab.reason.tolist() == ["positive", "positive", "censored", "negative", "after_first_event", "negative",
                                   "censored", "after_first_event"]
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(ts))
    shuffled = label_rows(pids[perm], ts[perm], out)
    assert shuffled.reason.tolist() == lab.reason[perm].tolist()
    assert shuffled.onset_ms.tolist() == lab.onset_ms[perm].tolist()


def test_input_checks_and_empty_input():
    out = Outcomes({}, {}, T0)
    empty = label_rows(np.array([], dtype=object), np.array([], dtype=np.int64), out)
    assert len(empty) == 0 and empty.label.dtype == np.int8 and empty.onset_ms.dtype == np.int64
    with pytest.raises(ValueError):
        label_rows(np.array(["A", "B"]), np.array([T0]), out)
    with pytest.raises(TypeError):
        label_rows(np.array(["A"]), np.array([1.5]), out)
    with pytest.raises(ValueError):
        label_rows(np.array(["A"]), np.array([T0]), out, horizon_ms=0)
    with pytest.raises(ValueError, match="missing"):
        label_rows(np.array(["A", None], dtype=object), np.array([T0, T0]), out)


# --- agreement with the reference ---------------------------------------------------------------------------
@st.composite
def timelines(draw):
    """Small integer clocks so that rows, onsets, ends and horizons collide on the boundaries often."""
    horizon = draw(st.integers(1, 12))
    patients = [f"P{i}" for i in range(draw(st.integers(1, 5)))]
    times = st.integers(0, 60)  # epoch ms are never negative (onset_ms uses -1 for "none")
    onsets = {p: sorted(set(draw(st.lists(times, max_size=4)))) for p in patients}
    onsets = {p: o for p, o in onsets.items() if o}
    ends = {p: draw(times) for p in patients if draw(st.booleans())}
    data_end = draw(times)
    rows = draw(st.lists(st.tuples(st.sampled_from(patients + ["stranger"]), times), max_size=60))
    pids = np.array([r[0] for r in rows], dtype=object)
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    return pids, ts, Outcomes(onsets, ends, data_end), horizon


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines())
def test_matches_reference_on_random_timelines(case):
    pids, ts, outcomes, horizon = case
    assert_matches_reference(pids, ts, outcomes, horizon)


def test_200k_rows_match_reference():
    rng = np.random.default_rng(42)
    n, n_patients, span = 200_000, 2_000, 60 * 24 * H
    patients = np.array([f"PT{i:05d}" for i in range(n_patients)], dtype=object)
    pids = patients[rng.integers(0, n_patients, n)]
    # Rows on a 5-minute grid and onsets on the hour, so exact boundary hits happen too.
    ts = T0 + rng.integers(0, span // (5 * 60_000), n) * 5 * 60_000
    onsets = {}
    for p in patients[rng.random(n_patients) < 0.3]:
        onsets[p] = sorted(set((T0 + rng.integers(0, span // H, rng.integers(1, 4)) * H).tolist()))
    ends = {p: int(T0 + rng.integers(1, span // H) * H) for p in patients[rng.random(n_patients) < 0.5]}
    outcomes = Outcomes(onsets, ends, T0 + span - 3 * 24 * H)
    lab = label_rows(pids, ts, outcomes)
    assert len(lab) == n
    assert set(lab.reason.tolist()) == {"positive", "negative", "after_first_event", "censored"}
    assert_matches_reference(pids, ts, outcomes, HORIZON_MS)
