"""Point-in-time training labels: adverse_event_24h for each feature row (docs/labels.md).

``adverse_event_24h`` of a row (patient, t) is 1 if a confirmed adverse event of that patient
has onset in (t, t + 24 h], else 0. Rows at or after the patient's first onset are excluded;
rows whose horizon is not fully observed (end of observation before t + 24 h) and that are not
positive are censored. Outcomes come only from the validated clinical.adverse_events and
clinical.patients records (the same ``streams.validation`` code the live worker runs), never
from simulator internals.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streams.events import CleanAdverseEvent, CleanPatientEvent
from streams.validation import Accepted

HORIZON_MS = 24 * 3600 * 1000

# Patient events that end observation (enrolment does not).
END_EVENTS = frozenset({"discharged", "withdrawn", "died"})

# Values of Labels.reason.
POSITIVE, NEGATIVE, AFTER_FIRST_EVENT, CENSORED = "positive", "negative", "after_first_event", "censored"
REASONS: tuple[str, ...] = (POSITIVE, NEGATIVE, AFTER_FIRST_EVENT, CENSORED)


@dataclass
class Outcomes:
    """What happened to each patient, as replayed from clinical.adverse_events and clinical.patients."""

    onsets: dict[str, list[int]]  # patient_id -> sorted unique onset_ms of qualifying AEs
    end_ms: dict[str, int]  # patient_id -> earliest discharge/withdrawal/death time (if any)
    data_end_ms: int | None  # end of the replayed data (None only when nothing was seen and none was given)


class OutcomeCollector:
    """Feed clean events (any type; others are ignored) one at a time, e.g. while replaying Kafka.

    ``add`` also takes a ``streams.validation.Accepted`` (unwrapped) and ignores a ``Rejection``,
    so a replay loop can pass ``validate_record(...)`` straight in.
    """

    def __init__(self, min_grade: int = 1) -> None:
        if not 1 <= min_grade <= 5:
            raise ValueError(f"min_grade must be a CTCAE grade 1-5, got {min_grade}")
        self.min_grade = min_grade
        # event_id -> (patient_id, onset_ms, severity). The first delivery wins: a redelivery is the same report.
        self._aes: dict[str, tuple[str, int, int]] = {}
        self._end: dict[str, int] = {}
        self._max_ms: int | None = None
        self.duplicates = 0  # adverse-event redeliveries dropped (same event_id)

    def add(self, event: object) -> None:
        if isinstance(event, Accepted):
            event = event.event
        if isinstance(event, CleanAdverseEvent):
            if event.event_id in self._aes:
                self.duplicates += 1
            else:
                self._aes[event.event_id] = (event.patient_id, event.onset_ms, event.severity)
            # A report exists from reported_ms on: that, not the onset, is when the data reached us.
            self._see(event.reported_ms)
        elif isinstance(event, CleanPatientEvent):
            if event.event in END_EVENTS:
                prev = self._end.get(event.patient_id)
                if prev is None or event.ts_ms < prev:
                    self._end[event.patient_id] = event.ts_ms
            self._see(event.ts_ms)
        else:
            ts = getattr(event, "ts_ms", None)
            if isinstance(ts, int):
                self._see(ts)

    def _see(self, ts_ms: int) -> None:
        if self._max_ms is None or ts_ms > self._max_ms:
            self._max_ms = ts_ms

    @property
    def max_seen_ms(self) -> int | None:
        """The latest event time fed so far (AE reports count by reported_ms), or None."""
        return self._max_ms

    def outcomes(self, data_end_ms: int | None = None) -> Outcomes:
        """The outcomes so far. ``data_end_ms=None`` uses the latest event time seen (``max_seen_ms``)."""
        onsets: dict[str, set[int]] = {}
        for patient_id, onset_ms, severity in self._aes.values():
            if severity >= self.min_grade:
                onsets.setdefault(patient_id, set()).add(onset_ms)
        return Outcomes(
            onsets={p: sorted(s) for p, s in onsets.items()},
            end_ms=dict(self._end),
            data_end_ms=self._max_ms if data_end_ms is None else int(data_end_ms),
        )


def collect_outcomes(events: Iterable, data_end_ms: int | None = None, min_grade: int = 1) -> Outcomes:
    """Outcomes of a sequence of clean events (see OutcomeCollector)."""
    collector = OutcomeCollector(min_grade)
    for event in events:
        collector.add(event)
    return collector.outcomes(data_end_ms)


@dataclass
class Labels:
    label: np.ndarray  # int8, 1/0 (0 for excluded rows: ignore it)
    included: np.ndarray  # bool: usable for training (reason positive or negative)
    reason: np.ndarray  # object: "positive", "negative", "after_first_event", "censored"
    onset_ms: np.ndarray  # int64: the first qualifying onset in (t, t + horizon], or -1 when none

    def __len__(self) -> int:
        return len(self.label)


def label_rows(patient_ids: np.ndarray, ts_ms: np.ndarray, outcomes: Outcomes,
               horizon_ms: int = HORIZON_MS) -> Labels:
    """Label feature rows (patient_ids[i], ts_ms[i]); vectorized, any row order, O(n log n).

    Precedence per row: after_first_event (t >= first onset) > positive (an onset in (t, t + h])
    > negative (t + h <= end of observation) > censored. End of observation is
    min(the patient's end_ms, data_end_ms). An onset counts even if it lies after the patient's end
    (a late report of an event at or after discharge): an onset is an onset.
    """
    pids = np.asarray(patient_ids)
    ts = np.asarray(ts_ms)
    if pids.ndim != 1 or ts.shape != pids.shape:
        raise ValueError(f"patient_ids and ts_ms must be 1-D of equal length, got {pids.shape} and {ts.shape}")
    if ts.size and not np.issubdtype(ts.dtype, np.integer):
        raise TypeError(f"ts_ms must be integer epoch milliseconds, got dtype {ts.dtype}")
    ts = ts.astype(np.int64, copy=False)
    if horizon_ms <= 0:
        raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
    if outcomes.data_end_ms is None:
        # Without an end of data every unfinished patient would look event-free forever: refuse, do not guess.
        raise ValueError("outcomes.data_end_ms is None: give the end of the replayed data")
    n = ts.size
    if n == 0:
        return Labels(np.zeros(0, np.int8), np.zeros(0, bool), np.empty(0, object), np.zeros(0, np.int64))

    # Hash-based factorization: much faster than np.unique on 1M Python strings.
    codes, uniques = pd.factorize(pids)
    if (codes < 0).any():
        raise ValueError("patient_ids contains missing values")
    codes = codes.astype(np.int64, copy=False)
    index = {pid: i for i, pid in enumerate(uniques.tolist())}

    data_end = int(outcomes.data_end_ms)
    end_obs = np.full(len(uniques), data_end, dtype=np.int64)
    for pid, end in outcomes.end_ms.items():
        i = index.get(pid)
        if i is not None:
            end_obs[i] = min(int(end), data_end)

    # Flat onsets of the patients that have rows, sorted by (patient code, onset).
    on_code_parts, on_ms_parts = [], []
    for pid, onsets in outcomes.onsets.items():
        i = index.get(pid)
        if i is not None and len(onsets):
            on_ms_parts.append(np.asarray(onsets, dtype=np.int64))
            on_code_parts.append(np.full(len(onsets), i, dtype=np.int64))
    if on_ms_parts:
        on_code, on_ms = np.concatenate(on_code_parts), np.concatenate(on_ms_parts)
    else:
        on_code, on_ms = np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((on_ms, on_code))
    on_code, on_ms = on_code[order], on_ms[order]
    m = on_ms.size

    if m:
        # One searchsorted over (patient, time) pairs: dense time ranks make a single int64 key that cannot
        # overflow (codes * ranks <= n * (n + m)), whatever the epoch values are.
        _, inverse = np.unique(np.concatenate([ts, on_ms]), return_inverse=True)
        n_ranks = np.int64(inverse.max()) + 1
        row_key = codes * n_ranks + inverse[:n]
        on_key = on_code * n_ranks + inverse[n:]
        # First onset of the row's patient: rows at or after it are excluded.
        first_idx = np.minimum(np.searchsorted(on_code, codes, side="left"), m - 1)
        after = (on_code[first_idx] == codes) & (ts >= on_ms[first_idx])
        # Next onset strictly after t (side="right": an onset exactly at t is outside the open interval (t, ...]).
        next_idx = np.searchsorted(on_key, row_key, side="right")
        clipped = np.minimum(next_idx, m - 1)
        next_ms = on_ms[clipped]
        in_window = (next_idx < m) & (on_code[clipped] == codes) & (next_ms - ts <= horizon_ms)
    else:
        after = in_window = np.zeros(n, bool)
        next_ms = np.zeros(n, np.int64)

    positive = in_window & ~after
    observed = end_obs[codes] - ts >= horizon_ms  # t + h <= end of observation
    negative = ~after & ~positive & observed
    censored = ~after & ~positive & ~observed

    reason = np.empty(n, dtype=object)
    reason[after] = AFTER_FIRST_EVENT
    reason[positive] = POSITIVE
    reason[negative] = NEGATIVE
    reason[censored] = CENSORED
    return Labels(
        label=positive.astype(np.int8),
        included=positive | negative,
        reason=reason,
        onset_ms=np.where(in_window, next_ms, np.int64(-1)).astype(np.int64, copy=False),
    )
