"""Online store: the latest feature vector per patient in a Redis hash.

Key `patient:{patient_id}:features`; fields: every registry feature, `updated_at`
(ISO-8601 UTC event time of the vector), `updated_at_ms`, `event_id` and
`feature_version`. A Lua script makes each write conditional, so an older vector
(a replay, a redelivery after a crash) never overwrites a newer one, and it
refreshes the 48 h TTL on every write. Writes are coalesced to one per patient
per flush and pipelined.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import redis

from streams.timestamps import iso_ms
from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION

TTL_SECONDS = 48 * 3600

# KEYS[1] = hash key; ARGV[1] = updated_at_ms; ARGV[2] = ttl seconds; ARGV[3..] = field, value pairs.
_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'updated_at_ms')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


_NAMES = [name.encode() for name in FEATURE_NAMES]


def features_key(patient_id: str) -> str:
    return f"patient:{patient_id}:features"


class _Coalescing:
    """Keeps only the newest vector per patient until flush (ties: the later one wins)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, str, Sequence[float]]] = {}

    def add(self, patient_id: str, ts_ms: int, event_id: str, values: Sequence[float]) -> None:
        current = self._pending.get(patient_id)
        if current is None or ts_ms >= current[0]:
            self._pending[patient_id] = (ts_ms, event_id, values)

    @property
    def buffered(self) -> int:
        return len(self._pending)


class MemoryOnlineStore(_Coalescing):
    """The online store's semantics in a dict: for replay dry runs and test oracles."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: dict[str, tuple[int, str, np.ndarray]] = {}

    def flush(self) -> int:
        written = 0
        for patient_id, (ts_ms, event_id, values) in self._pending.items():
            current = self.vectors.get(patient_id)
            if current is None or ts_ms >= current[0]:
                self.vectors[patient_id] = (ts_ms, event_id, np.asarray(values, dtype=np.float64))
                written += 1
        self._pending.clear()
        return written


class OnlineStore(_Coalescing):
    def __init__(self, client: redis.Redis, ttl_seconds: int = TTL_SECONDS) -> None:
        super().__init__()
        self.client = client
        self.ttl_seconds = ttl_seconds
        self._script = client.register_script(_WRITE_IF_NEWER)

    @classmethod
    def from_url(cls, url: str) -> "OnlineStore":
        return cls(redis.Redis.from_url(url))

    def flush(self) -> int:
        """Write the buffered vectors in one pipeline; returns how many were newer and written."""
        if not self._pending:
            return 0
        pipe = self.client.pipeline(transaction=False)
        n = len(_NAMES)
        for patient_id, (ts_ms, event_id, values) in self._pending.items():
            args: list = [ts_ms, self.ttl_seconds, b"updated_at_ms", ts_ms, b"updated_at", iso_ms(ts_ms),
                          b"event_id", event_id, b"feature_version", FEATURE_VERSION, *([None] * (2 * n))]
            # Pre-encoded bytes: redis-py then packs them as they are (this loop is the sink's hot path).
            # repr round-trips a float64 exactly; an undefined feature (NaN) is stored as "nan".
            args[10::2] = _NAMES
            args[11::2] = [b"nan" if v != v else repr(v).encode() for v in np.asarray(values).tolist()]
            self._script(keys=[features_key(patient_id)], args=args, client=pipe)
        written = sum(int(r) for r in pipe.execute())
        self._pending.clear()
        return written


def read_features(client: redis.Redis, patient_id: str,
                  names: Iterable[str] = FEATURE_NAMES) -> tuple[np.ndarray, dict[str, str]] | None:
    """The patient's vector in registry order (NaN where undefined) and its metadata, or None."""
    raw = client.hgetall(features_key(patient_id))
    if not raw:
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}
    vector = np.array([float(data[n]) for n in names], dtype=np.float64)
    meta = {k: data[k] for k in ("updated_at", "updated_at_ms", "event_id", "feature_version") if k in data}
    return vector, meta
