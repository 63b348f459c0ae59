"""Online store: the latest feature vector per patient in a Redis hash.

Key `patient:{patient_id}:features`; fields: every registry feature, `updated_at`
(ISO-8601 UTC event time of the vector), `updated_at_ms`, `event_id` and
`feature_version`. A Lua script makes each write conditional, so an older vector
(a replay, a redelivery after a crash) never overwrites a newer one, and it
refreshes the 48 h TTL on every write. Writes are coalesced to one per patient
per flush and pipelined.
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import orjson
import redis
import redis.asyncio

from streams.timestamps import iso_ms
from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES

TTL_SECONDS = 48 * 3600

# KEYS = hash keys; ARGV = ttl seconds, feature_version, then per key: updated_at_ms, updated_at, event_id
# and the features as one text of comma-separated decimals in registry order (`features_text`). The worker
# formats them in C (orjson, shortest round-trip text) and Redis stores the pieces as they are. Measured in
# the server (2026-11-26, 64 vectors per call, overwriting): ~150 us per vector, against ~200 us when the
# values went as MessagePack float64s (Redis formats each number it is handed as %.17g) and ~230 us with
# ~380 separate arguments. HSET itself is ~70 us of that. Python-side formatting (repr per value) cost the
# worker ~170 us per vector; `features_text` ~19 us (2026-11-27, the engine's vectors, which all hold NaNs:
# orjson ~7 us of it). Many vectors go in one call: one command and one reply per call rather than per vector.
# (Keys of one call must share a hash slot on Redis Cluster; this targets one Redis.)
# Where Redis's time goes (INFO commandstats, 2,000 vectors/s from the benchmark's worker, 2026-11-27): ~200 us
# per vector in the script, of which HSET ~60, HGET ~3, EXPIRE ~2; the rest is Lua building the arguments
# (~190 strings a vector). Measured alternatives (bench of 64-vector calls, same day): the fields as separate
# arguments, handed to HSET with `unpack(ARGV, ...)`, ~90-100 us in Redis, but building and packing ~390
# arguments a vector cost the client ~170 us more per vector (the sync client, with hiredis's packer; the
# worker's asyncio client packs in Python); names and values as one JSON array (cjson.decode, then unpack)
# ~170-200 us in Redis, no better.
_WRITE_IF_NEWER = """
local names = {FEATURE_NAMES}
local written = 0
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local current = redis.call('HGET', KEYS[i], 'updated_at_ms')
  if not current or tonumber(current) <= tonumber(ARGV[a + 1]) then
    local args = {KEYS[i], 'updated_at_ms', ARGV[a + 1], 'updated_at', ARGV[a + 2], 'event_id', ARGV[a + 3],
                  'feature_version', ARGV[2]}
    local n, k = #args, 0
    for value in string.gmatch(ARGV[a + 4], '[^,]+') do
      k = k + 1
      args[n + 1] = names[k]
      args[n + 2] = value
      n = n + 2
    end
    if k ~= #names then
      return redis.error_reply('feature vector of ' .. KEYS[i] .. ' has ' .. k .. ' values, expected ' .. #names)
    end
    redis.call('HSET', unpack(args))
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    written = written + 1
  end
end
return written
""".replace("FEATURE_NAMES", ",".join(f"'{name}'" for name in FEATURE_NAMES))
if not all(name.isidentifier() for name in FEATURE_NAMES):  # pragma: no cover - they go into Lua as literals
    raise ValueError("feature names must be identifiers to be written to the online store")
# Vectors per script call: Redis runs a call to its end before serving anyone else (~0.2 ms a vector).
VECTORS_PER_CALL = 64


def features_text(values: Sequence[float]) -> bytes:
    """The vector as the script's argument: shortest round-trip decimals, 'nan' where undefined."""
    array = np.ascontiguousarray(values, dtype=np.float64)  # orjson serializes C-contiguous arrays only
    if array.shape != (N_FEATURES,):
        raise ValueError(f"a feature vector has {N_FEATURES} values, got shape {array.shape}")
    text = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    if b"null" in text:  # orjson writes NaN and +-inf as null
        if np.isinf(array).any():
            return ",".join(map(repr, array.tolist())).encode()  # 'inf', '-inf', 'nan': all float()-able
        text = text.replace(b"null", b"nan")
    return text


def features_key(patient_id: str) -> str:
    return f"patient:{patient_id}:features"


Pending = dict[str, tuple[int, str, Sequence[float]]]  # patient_id -> (ts_ms, event_id, values)


class _Coalescing:
    """Keeps only the newest vector per patient until flush (ties: the later one wins)."""

    def __init__(self) -> None:
        self._pending: Pending = {}

    def add(self, patient_id: str, ts_ms: int, event_id: str, values: Sequence[float]) -> None:
        current = self._pending.get(patient_id)
        if current is None or ts_ms >= current[0]:
            self._pending[patient_id] = (ts_ms, event_id, values)

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def take(self) -> Pending:
        """Take the buffered vectors out, to `write` later (possibly in another thread)."""
        pending, self._pending = self._pending, {}
        return pending

    def write(self, pending: Pending) -> int:
        raise NotImplementedError

    def flush(self) -> int:
        """Write the buffered vectors now; returns how many were newer and written."""
        return self.write(self.take()) if self._pending else 0


class MemoryOnlineStore(_Coalescing):
    """The online store's semantics in a dict: for replay dry runs and test oracles."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: dict[str, tuple[int, str, np.ndarray]] = {}

    def write(self, pending: Pending) -> int:
        written = 0
        for patient_id, (ts_ms, event_id, values) in pending.items():
            current = self.vectors.get(patient_id)
            if current is None or ts_ms >= current[0]:
                self.vectors[patient_id] = (ts_ms, event_id, np.asarray(values, dtype=np.float64))
                written += 1
        return written


class OnlineStore(_Coalescing):
    """Redis writes, from a thread (`write`) or from an event loop (`write_async`, no thread hand-offs)."""

    def __init__(self, client: redis.Redis | None = None, ttl_seconds: int = TTL_SECONDS,
                 async_client: redis.asyncio.Redis | None = None) -> None:
        super().__init__()
        if client is None and async_client is None:
            raise ValueError("an OnlineStore needs a Redis client, sync or async")
        self.client = client
        self.ttl_seconds = ttl_seconds
        self._script = client.register_script(_WRITE_IF_NEWER) if client is not None else None
        self._async_client = async_client
        self._async_script = async_client.register_script(_WRITE_IF_NEWER) if async_client is not None else None
        self._async_order: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str) -> "OnlineStore":
        return cls(redis.Redis.from_url(url))

    def _calls(self, pending: Pending) -> Iterator[tuple[list[str], list]]:
        """The script calls (keys, args) that write `pending`, VECTORS_PER_CALL vectors each."""
        items = list(pending.items())
        for start in range(0, len(items), VECTORS_PER_CALL):
            keys, args = [], [self.ttl_seconds, FEATURE_VERSION]
            for patient_id, (ts_ms, event_id, values) in items[start:start + VECTORS_PER_CALL]:
                keys.append(features_key(patient_id))
                args += [ts_ms, iso_ms(ts_ms), event_id, features_text(values)]
            yield keys, args

    def write(self, pending: Pending) -> int:
        """Write vectors in one pipeline of script calls; returns how many were newer and written. Thread-safe."""
        if self.client is None:
            raise RuntimeError("this OnlineStore was made without a sync client")
        if not pending:
            return 0
        calls = list(self._calls(pending))
        try:
            return self._evalsha(calls)
        except redis.exceptions.NoScriptError:  # Redis restarted or its scripts were flushed
            self.client.script_load(_WRITE_IF_NEWER)
            return self._evalsha(calls)  # the writes are conditional: redoing them is harmless

    def _evalsha(self, calls: list[tuple[list[str], list]]) -> int:
        pipe = _queue_evalsha(self.client.pipeline(transaction=False), self._script.sha, calls)
        return sum(int(r) for r in pipe.execute())

    async def write_async(self, pending: Pending) -> int:
        """`write` on the event loop. Calls land in the order they were made (ties at the same event time go
        to the later vector), however their awaits interleave."""
        if self._async_client is None:
            raise RuntimeError("this OnlineStore was made without an async client")
        if not pending:
            return 0
        if self._async_order is None:
            self._async_order = asyncio.Lock()  # FIFO: waiters acquire in arrival order
        async with self._async_order:
            calls = list(self._calls(pending))
            try:
                return await self._evalsha_async(calls)
            except redis.exceptions.NoScriptError:  # Redis restarted or its scripts were flushed
                await self._async_client.script_load(_WRITE_IF_NEWER)
                return await self._evalsha_async(calls)  # the writes are conditional: redoing them is harmless

    async def _evalsha_async(self, calls: list[tuple[list[str], list]]) -> int:
        pipe = _queue_evalsha(self._async_client.pipeline(transaction=False), self._async_script.sha, calls)
        return sum(int(r) for r in await pipe.execute())


def _queue_evalsha(pipe: Any, sha: str, calls: list[tuple[list[str], list]]) -> Any:
    """Queue the script calls on a pipeline (sync or async) as plain EVALSHA commands. Not the registered
    Script objects: a pipeline holding them checks SCRIPT EXISTS before every execute, a second round trip,
    and on the worker's busy event loop each round trip can wait behind a whole micro-batch. The callers
    load the script again on NOSCRIPT."""
    for keys, args in calls:
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
    return pipe


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
