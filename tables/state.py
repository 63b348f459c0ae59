"""Per-patient feature state: a persistence model for changelogged key-value tables
and the incremental :class:`FeatureEngine` that every runtime drives.

Store layout (JSON-able values, NaN never stored: missing is ``None``):

* ``v|{patient_id}|{bucket_start_ms}`` -> list of vitals rows
  ``[ts_ms, source, hr, sbp, dbp, rr, spo2, temp, consciousness, on_oxygen]`` in
  arrival order, one key per 10-minute bucket of event time.
* ``c|{patient_id}`` -> context dict: ``t`` (latest event time), ``vt`` (latest
  vitals time), ``enr`` (enrolment time), ``demo``, ``labs``/``doses`` of the
  retention horizon, ``lab_last`` (latest value per test) and ``dose_last``.

A vitals event writes its bucket; the context is rewritten only when the latest
event time enters a new bucket (then expired buckets are deleted, so tombstones
reach the changelog) or on lab/medication/patient events. Everything else (the
exact window sums, deques) lives in an LRU of in-memory patient states and is
rebuilt from the store on a miss, giving the same vectors (exact arithmetic).
"""
from __future__ import annotations

import json
import math
import struct
from bisect import insort
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol, Union

import numpy as np
import orjson

from streams.events import CleanAdverseEvent, CleanLab, CleanMedication, CleanPatientEvent, CleanVitals
from streams.vocab import COMORBIDITIES, DRUGS, LAB_TESTS, TRIAL_ARMS

from streams.timestamps import DAY_MS
from tables.features.context import demo_block, lab_block, med_block
from tables.features.latest import CONSCIOUSNESS_CODE, write_latest
from tables.features.registry import (
    FEATURE_INDEX,
    HOUR_MS,
    N_FEATURES,
    RECALL_MS,
    STUDY_DRUG,
    block_start,
    features_as_dict,
    slug,
)
from tables.features.rolling import Row, VitalsWindows

__all__ = [
    "BUCKET_MS",
    "DictStateStore",
    "FeatureEngine",
    "FeatureUpdate",
    "Rejection",
    "StateStore",
    "context_key",
    "features_as_dict",
    "vitals_key",
]

BUCKET_MS = 10 * 60_000
_NAN = math.nan
_MAX_ABS = 1e9  # larger "measurements" are corrupt; treated as missing (keeps fixed-point ints short)
_PACK = struct.Struct(f"<{N_FEATURES}d").pack
_DRUGS = frozenset(DRUGS)
_LABS = frozenset(LAB_TESTS)


class StateStore(Protocol):
    """Key-value table (a Faust table in production). Values must be JSON-able."""

    def get(self, key: str) -> Any | None: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class DictStateStore:
    """In-process store for replay and tests.

    With ``serialize=True`` (default) values are stored as strict JSON text, as a
    changelogged table would: it rejects NaN and no caller can mutate a stored value.
    """

    __slots__ = ("data", "serialize", "writes", "deletes")

    def __init__(self, *, serialize: bool = True) -> None:
        self.data: dict[str, Any] = {}
        self.serialize = serialize
        self.writes = 0
        self.deletes = 0

    def get(self, key: str) -> Any | None:
        v = self.data.get(key)
        return json.loads(v) if self.serialize and v is not None else v

    def set(self, key: str, value: Any) -> None:
        self.writes += 1
        self.data[key] = json.dumps(value, allow_nan=False, separators=(",", ":")) if self.serialize else value

    def delete(self, key: str) -> None:
        self.deletes += 1
        self.data.pop(key, None)


class _EncodedPrefix:
    """The JSON text of the first ``rows`` rows of a bucket, shared by the bucket's successive versions."""

    __slots__ = ("rows", "text")

    def __init__(self) -> None:
        self.rows = 0
        self.text = b"[]"


class BucketRows(list):
    """A version of a vitals bucket: its rows (a list, as stored), and their JSON text built by extending
    the text of an earlier version instead of encoding every row again.

    A bucket's newest rows are rewritten after every event. Its versions only ever append, so the text of
    one version is a prefix of the next one's: without this, a bucket of n rows cost O(n) to encode on
    every write, and at live rates encoding buckets was about a tenth of the worker's time.
    """

    __slots__ = ("_prefix",)

    def __init__(self, rows: Iterable[Any], prefix: _EncodedPrefix) -> None:
        super().__init__(rows)
        self._prefix = prefix

    @classmethod
    def start(cls, row: Row) -> "BucketRows":
        return cls((row,), _EncodedPrefix())

    @classmethod
    def of(cls, rows: list[Any]) -> "BucketRows":
        """A bucket as read from a store: the version itself if the store still holds it, else a new line of
        versions (rows read back as lists encode to the same text as tuples)."""
        return rows if isinstance(rows, BucketRows) else cls(rows, _EncodedPrefix())

    def appended(self, row: Row) -> "BucketRows":
        """A new version with ``row`` added (this one, which a store may still hold, is unchanged)."""
        return BucketRows((*self, row), self._prefix)

    def json_bytes(self) -> bytes:
        """``orjson.dumps(list(self))``, the same bytes, from the longest prefix already encoded."""
        prefix, n = self._prefix, len(self)
        if prefix.rows > n:  # an older version encoded after a newer one: not extendable
            return orjson.dumps(list(self))
        if prefix.rows < n:
            tail = b",".join([orjson.dumps(row) for row in self[prefix.rows :]])
            prefix.text = prefix.text[:-1] + (b"," if prefix.rows else b"") + tail + b"]"
            prefix.rows = n
        return prefix.text


def vitals_key(patient_id: str, bucket_start_ms: int) -> str:
    return f"v|{patient_id}|{bucket_start_ms}"


def context_key(patient_id: str) -> str:
    return f"c|{patient_id}"


def write_rank(key: str, deleted: bool) -> int:
    """Where a flush's write of `key` goes in the order it reaches a durable store (and its changelog).

    A worker killed part-way through leaves any prefix of that order behind, and the next owner redoes the
    flush's records on it. Rows of vitals buckets go first, then each patient's context (its time decides
    which buckets are read back), then deletions of buckets that time retired. Then a prefix is a state the
    redone records turn into the same results; a context ahead of its rows would turn them into late events.
    """
    if deleted:
        return 2
    return 1 if key.startswith("c|") else 0


@dataclass(slots=True)
class FeatureUpdate:
    """The patient's feature vector at ``ts_ms`` (their latest event time), in registry order."""

    patient_id: str
    ts_ms: int
    event_id: str
    values: np.ndarray


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the engine did not apply. reason: late_event | duplicate | unknown_code | invalid_value."""

    reason: str
    detail: str
    patient_id: str = ""
    event_id: str = ""


Result = Union[FeatureUpdate, Rejection, None]

_P_LABS = block_start(*(f"lab_{slug(x)}_latest" for x in LAB_TESTS), *(f"lab_{slug(x)}_change_24h" for x in LAB_TESTS))
_P_MEDS = block_start("med_doses_24h", *(f"med_{slug(d)}_doses_24h" for d in DRUGS), "vs101_dose_mg_24h")
_P_DEMO = block_start(
    "age", "is_male", "bmi", *(f"arm_{slug(a)}" for a in TRIAL_ARMS),
    "comorbidity_count", *(f"comorb_{slug(c)}" for c in COMORBIDITIES),
)  # fmt: skip
_P_LAB_HOURS = FEATURE_INDEX["hours_since_last_lab"]
_P_VS101_HOURS = FEATURE_INDEX["vs101_hours_since_last_dose"]
_P_FLAG = FEATURE_INDEX["drug_interaction_flag"]
_P_ENR = FEATURE_INDEX["hours_since_enrollment"]
_P_LASTVITAL = FEATURE_INDEX["hours_since_last_vital"]


def _hours_since(ts: Optional[int], t: int) -> float:
    """Hours from ts to t; NaN if there is no ts within RECALL_MS (a replay warms up as long)."""
    return _NAN if ts is None or ts <= t - RECALL_MS else (t - ts) / HOUR_MS


def _clean(v: Any) -> Optional[float]:
    """A usable measurement or None (missing, NaN, inf, absurd)."""
    if v is None:
        return None
    v = float(v)
    return v if -_MAX_ABS < v < _MAX_ABS else None  # False for NaN


def _new_context() -> dict[str, Any]:
    return {"t": None, "vt": None, "enr": None, "demo": None, "labs": [], "lab_last": {}, "doses": [], "dose_last": {}}


class _Patient:
    """In-memory state of one patient (rebuilt from the store on a cache miss)."""

    __slots__ = (
        "pid", "ctx", "t", "win", "vec", "ctx_bucket", "buckets", "open_bucket", "open_rows",
        "lab_vals", "lab_until", "med_vals", "med_until", "last_lab_ts",
    )  # fmt: skip

    def __init__(self, pid: str, ctx: dict[str, Any]) -> None:
        self.pid = pid
        self.ctx = ctx
        self.t: Optional[int] = ctx["t"]
        self.win: Optional[VitalsWindows] = None
        self.vec: list[float] = [_NAN] * N_FEATURES
        self.ctx_bucket: Optional[int] = None  # bucket of `t` when the context was last written
        self.buckets: list[int] = []  # vitals bucket starts present in the store, sorted
        self.open_bucket: Optional[int] = None  # newest bucket and its rows, kept to avoid a read per event
        self.open_rows = BucketRows.of([])  # rows: tuples, or lists when read back from the store
        self.lab_vals: list[float] = []
        self.lab_until = -math.inf  # recompute the lab block when t reaches this (or labs change)
        self.med_vals: list[float] = []
        self.med_until = -math.inf
        self.last_lab_ts = max((v[0] for v in ctx["lab_last"].values()), default=None)
        self.set_demo()

    def set_demo(self) -> None:
        vals = demo_block(self.ctx["demo"])
        self.vec[_P_DEMO : _P_DEMO + len(vals)] = vals


class FeatureEngine:
    """Incremental, exact per-patient feature vectors from clean events (no Faust/Kafka dependency).

    Not thread-safe: one engine per partition/worker, events of a patient in order of arrival.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        allowed_lateness_ms: int = 3_600_000,
        max_cached_patients: int = 100_000,
    ) -> None:
        if allowed_lateness_ms < 0 or max_cached_patients < 1:
            raise ValueError("allowed_lateness_ms must be >= 0 and max_cached_patients >= 1")
        self.store = store
        self.lateness = int(allowed_lateness_ms)
        self.retention = DAY_MS + self.lateness  # what the store keeps behind the latest event time
        self.max_cached = max_cached_patients
        self._cache: OrderedDict[str, _Patient] = OrderedDict()
        self.rebuilds = 0
        self._dispatch: dict[type, Callable[[Any], Result]] = {
            CleanVitals: self._vitals,
            CleanLab: self._lab,
            CleanMedication: self._medication,
            CleanPatientEvent: self._patient,
        }

    # -- public API -----------------------------------------------------------------
    def process(self, event: CleanVitals | CleanLab | CleanMedication | CleanPatientEvent) -> Result:
        """Apply one event; return the patient's new vector, a Rejection, or None (patient events)."""
        handler = self._dispatch.get(type(event))
        if handler is None:
            if isinstance(event, CleanAdverseEvent):
                return None  # outcomes are labels, never features
            raise TypeError(f"unsupported event type {type(event).__name__}")
        return handler(event)

    def process_many(self, events: Iterable[Any]) -> list[Result]:
        return [self.process(e) for e in events]

    def current(self, patient_id: str) -> Optional[FeatureUpdate]:
        """The patient's vector at their latest event time, without an event (None if unknown)."""
        if patient_id not in self._cache and self.store.get(context_key(patient_id)) is None:
            return None  # do not cache empty states for lookups of unknown patients
        p = self._get(patient_id)
        if p.t is None:
            return None
        return self._emit(p, "")

    @property
    def cached_patients(self) -> int:
        return len(self._cache)

    def drop_cache(self) -> None:
        """Forget all in-memory state (as after a restart); the store is the source of truth."""
        self._cache.clear()

    # -- state access -----------------------------------------------------------------
    def _get(self, pid: str) -> _Patient:
        cache = self._cache
        p = cache.get(pid)
        if p is not None:
            cache.move_to_end(pid)
            return p
        p = self._load(pid)
        cache[pid] = p
        if len(cache) > self.max_cached:
            cache.popitem(last=False)
        return p

    def _load(self, pid: str) -> _Patient:
        stored = self.store.get(context_key(pid))
        if stored is None:
            return _Patient(pid, _new_context())
        ctx = dict(stored)  # never mutate a value the store may still hold
        self.rebuilds += 1
        p = _Patient(pid, ctx)
        t = ctx["t"]
        if t is None:
            return p
        # Every live bucket lies in [t - retention, t]: the context is rewritten whenever
        # t enters a new bucket, before any row is written there.
        rows: list[Any] = []  # as stored: tuples, or lists read back from a serializing store
        first = (t - self.retention) // BUCKET_MS * BUCKET_MS
        for b in range(first, t // BUCKET_MS * BUCKET_MS + 1, BUCKET_MS):
            bucket = self.store.get(vitals_key(pid, b))
            if bucket:
                p.buckets.append(b)
                p.open_bucket, p.open_rows = b, BucketRows.of(bucket)
                rows.extend(bucket)
        rows.sort(key=lambda r: r[0])  # stable: equal times keep arrival order
        if rows:  # rows of the newest bucket may be newer than the context's t and vt
            newest = rows[-1][0]
            t = max(t, newest)
            ctx["vt"] = newest if ctx["vt"] is None else max(ctx["vt"], newest)
        p.t = ctx["t"] = t
        p.ctx_bucket = t // BUCKET_MS * BUCKET_MS
        win = p.win = VitalsWindows(t, self.lateness)
        for r in rows:
            win.insert(tuple(r))
        return p

    def _advance(self, p: _Patient, ts: int) -> bool:
        """Move the patient's time to max(t, ts) (windows excluded). True if the context must be written."""
        t = p.t
        if t is not None and ts <= t:
            return False
        p.t = p.ctx["t"] = ts
        if p.win is None:
            p.win = VitalsWindows(ts, self.lateness)
        b = ts // BUCKET_MS * BUCKET_MS
        if b == p.ctx_bucket:
            return False
        p.ctx_bucket = b
        cut = ts - self.retention
        buckets = p.buckets
        while buckets and buckets[0] + BUCKET_MS <= cut:
            self.store.delete(vitals_key(p.pid, buckets.pop(0)))
        ctx = p.ctx
        if any(x[0] <= cut for x in ctx["labs"]):
            ctx["labs"] = [x for x in ctx["labs"] if x[0] > cut]
        if any(x[0] <= cut for x in ctx["doses"]):
            ctx["doses"] = [x for x in ctx["doses"] if x[0] > cut]
        return True

    def _write_context(self, p: _Patient) -> None:
        # A shallow snapshot: the engine keeps updating t/vt in memory, and nested
        # lists/dicts of the context are only ever replaced, never mutated, so a store
        # that holds written values by reference until it flushes sees this write's state.
        self.store.set(context_key(p.pid), dict(p.ctx))

    def _admission(self, p: _Patient, ts: int, event_id: str, duplicate: bool, what: str) -> Optional[Rejection]:
        """Dedup and lateness of one event (duplicate: its key is in state already).

        Duplicates of the last 24 h go first: a record redelivered after a crash is a duplicate, even when the
        patient's time has moved past the lateness since. Those rows are always held (the widest window), so
        the decision does not depend on how much older state a worker happens to hold.
        """
        t = p.t
        if duplicate and t is not None and ts > t - DAY_MS:
            return Rejection("duplicate", f"{what} already applied", p.pid, event_id)
        if t is not None and ts < t - self.lateness:
            return Rejection("late_event", f"ts {ts} is {t - ts} ms behind latest {t} (> {self.lateness})",
                             p.pid, event_id)
        if duplicate:  # older than 24 h, within a lateness longer than that
            return Rejection("duplicate", f"{what} already applied", p.pid, event_id)
        return None

    # -- handlers ---------------------------------------------------------------------
    def _vitals(self, ev: CleanVitals) -> Result:
        pid, ts = ev.patient_id, int(ev.ts_ms)
        p = self._get(pid)
        duplicate = p.win is not None and p.t is not None and ts <= p.t and p.win.is_duplicate(ts, ev.source)
        rej = self._admission(p, ts, ev.event_id, duplicate, f"vitals ({pid}, {ts}, {ev.source})")
        if rej is not None:
            return rej
        cons = ev.consciousness if ev.consciousness in CONSCIOUSNESS_CODE else None
        o2 = None if ev.on_oxygen is None else bool(ev.on_oxygen)
        row: Row = (
            ts, ev.source,
            _clean(ev.heart_rate), _clean(ev.bp_systolic), _clean(ev.bp_diastolic),
            _clean(ev.resp_rate), _clean(ev.spo2), _clean(ev.temperature),
            cons, o2,
        )  # fmt: skip
        store = self.store
        if self._advance(p, ts):
            self._write_context(p)  # before the row: rebuilds enumerate buckets up to ctx t
        # A new list per write: a store may hold written values by reference until it flushes.
        b = ts // BUCKET_MS * BUCKET_MS
        if b == p.open_bucket:
            rows = p.open_rows = p.open_rows.appended(row)
        elif p.open_bucket is None or b > p.open_bucket:
            rows = p.open_rows = BucketRows.start(row)
            p.open_bucket = b
            p.buckets.append(b)
        else:  # late event into an older bucket: read-modify-write
            rows = [*(store.get(vitals_key(pid, b)) or ()), row]
            if b not in p.buckets:
                insort(p.buckets, b)
        store.set(vitals_key(pid, b), rows)  # rows are tuples: JSON arrays, immutable
        win: VitalsWindows = p.win  # type: ignore[assignment]
        if not win.push(row, p.t, p.vec):  # type: ignore[arg-type]
            win.advance(p.t)  # type: ignore[arg-type]
            win.insert(row)
        vt = p.ctx["vt"]
        if vt is None or ts > vt:
            p.ctx["vt"] = ts
        return self._emit(p, ev.event_id)

    def _admit(self, pid: str, ts: int, event_id: str, history: str, code: str,
               what: str) -> tuple[_Patient, Optional[Rejection]]:
        """Dedup and lateness for a context event (a lab or a dose), then advance the patient's time to ts."""
        p = self._get(pid)
        duplicate = any(x[0] == ts and x[1] == code for x in p.ctx[history])
        rej = self._admission(p, ts, event_id, duplicate, f"{what} ({pid}, {ts}, {code})")
        if rej is not None:
            return p, rej
        self._advance(p, ts)
        p.win.advance(ts)  # type: ignore[union-attr]
        return p, None

    def _lab(self, ev: CleanLab) -> Result:
        pid, ts = ev.patient_id, int(ev.ts_ms)
        if ev.test not in _LABS:
            return Rejection("unknown_code", f"lab test {ev.test!r}", pid, ev.event_id)
        value = _clean(ev.value)
        if value is None:
            return Rejection("invalid_value", f"lab value {ev.value!r}", pid, ev.event_id)
        p, rej = self._admit(pid, ts, ev.event_id, "labs", ev.test, "lab")
        if rej is not None:
            return rej
        ctx = p.ctx
        ctx["labs"] = [*ctx["labs"], [ts, ev.test, value]]  # copy-on-write, see _write_context
        prev = ctx["lab_last"].get(ev.test)
        if prev is None or ts >= prev[0]:
            ctx["lab_last"] = {**ctx["lab_last"], ev.test: [ts, value]}
        if p.last_lab_ts is None or ts > p.last_lab_ts:
            p.last_lab_ts = ts
        p.lab_until = -math.inf
        self._write_context(p)
        return self._emit(p, ev.event_id)

    def _medication(self, ev: CleanMedication) -> Result:
        pid, ts = ev.patient_id, int(ev.ts_ms)
        if ev.drug not in _DRUGS:
            return Rejection("unknown_code", f"drug {ev.drug!r}", pid, ev.event_id)
        dose = _clean(ev.dose)
        p, rej = self._admit(pid, ts, ev.event_id, "doses", ev.drug, "dose")
        if rej is not None:
            return rej
        ctx = p.ctx
        ctx["doses"] = [*ctx["doses"], [ts, ev.drug, dose if dose is not None else 0.0, ev.unit]]
        prev = ctx["dose_last"].get(ev.drug)
        if prev is None or ts > prev:
            ctx["dose_last"] = {**ctx["dose_last"], ev.drug: ts}
        p.med_until = -math.inf
        self._write_context(p)
        return self._emit(p, ev.event_id)

    def _patient(self, ev: CleanPatientEvent) -> None:
        p = self._get(ev.patient_id)
        ctx = p.ctx
        if ev.event == "enrolled" and (ctx["enr"] is None or ev.ts_ms < ctx["enr"]):
            ctx["enr"] = int(ev.ts_ms)
        demo = dict(ctx["demo"] or {})
        for key, value in (
            ("age", ev.age), ("sex", ev.sex), ("weight_kg", ev.weight_kg),
            ("height_cm", ev.height_cm), ("arm", ev.trial_arm), ("site", ev.site),
        ):  # fmt: skip
            if value is not None:
                demo[key] = value
        if ev.event == "enrolled" or ev.comorbidities:  # enrolment is authoritative, even when empty
            demo["comorb"] = sorted(set(ev.comorbidities))
        ctx["demo"] = demo
        p.set_demo()
        self._write_context(p)
        return None

    # -- vector -------------------------------------------------------------------------
    def _emit(self, p: _Patient, event_id: str) -> FeatureUpdate:
        t: int = p.t  # type: ignore[assignment]
        vec, ctx, win = p.vec, p.ctx, p.win
        win.write_rolling(vec)  # type: ignore[union-attr]
        write_latest(vec, win.last, t)  # type: ignore[union-attr]
        # Labs and medications: recomputed only when changed or an item left the window.
        if t >= p.lab_until:
            p.lab_vals, p.lab_until = lab_block(ctx["labs"], ctx["lab_last"], t)
            vec[_P_LABS : _P_LABS + len(p.lab_vals)] = p.lab_vals
        vec[_P_LAB_HOURS] = _hours_since(p.last_lab_ts, t)
        if t >= p.med_until:
            p.med_vals, p.med_until = med_block(ctx["doses"], t)
            m = p.med_vals
            vec[_P_MEDS : _P_MEDS + len(m) - 1] = m[:-1]
            vec[_P_FLAG] = m[-1]
        vec[_P_VS101_HOURS] = _hours_since(ctx["dose_last"].get(STUDY_DRUG), t)
        enr, vt = ctx["enr"], ctx["vt"]
        vec[_P_ENR] = _NAN if enr is None else (t - enr) / HOUR_MS
        vec[_P_LASTVITAL] = _hours_since(vt, t)
        values = np.frombuffer(bytearray(_PACK(*vec)), dtype=np.float64)  # ~3x faster than np.array(list)
        return FeatureUpdate(p.pid, t, event_id, values)
