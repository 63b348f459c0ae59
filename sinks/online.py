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
from typing import Callable, Iterable, Sequence

import numpy as np
import orjson
import redis
import redis.asyncio
import redis.retry
from redis.backoff import ExponentialBackoff

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
# ~170-200 us in Redis, no better; as one MessagePack array of their texts (cmsgpack.unpack) ~110-150 us, but
# ~30 us more on the worker. An optimistic transaction instead of the script (WATCH and read, then MULTI, HSET,
# EXPIRE, EXEC; 2026-11-27) cost Redis ~85-95 us per vector, but the worker ~45 us to pack the ~380 arguments
# (even with a template filled by slice assignment), a second round trip and three replies per vector: at
# 2,000 events/s the worker went from ~0.65 to ~0.8 cores, and the writes took longer.
# The worker packs the calls itself (`_packed_calls`) and sends the script's text each time (EVAL, ~4.6 KB per
# 64 vectors; Redis keeps it compiled by its SHA1): nothing to reload after Redis restarts or SCRIPT FLUSH, and
# no redis-py command packing, which cost ~3.5 % of the worker at 2,000 events/s.
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
_SCRIPT = _WRITE_IF_NEWER.encode()
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
Landed = Callable[[list[str]], None]  # called with a script call's patients: Redis holds their vector or a newer one


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

    def write(self, pending: Pending, landed: Landed | None = None) -> int:
        raise NotImplementedError

    def flush(self) -> int:
        """Write the buffered vectors now; returns how many were newer and written."""
        return self.write(self.take()) if self._pending else 0


class MemoryOnlineStore(_Coalescing):
    """The online store's semantics in a dict: for replay dry runs and test oracles."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: dict[str, tuple[int, str, np.ndarray]] = {}

    def write(self, pending: Pending, landed: Landed | None = None) -> int:
        written = 0
        for patient_id, (ts_ms, event_id, values) in pending.items():
            current = self.vectors.get(patient_id)
            if current is None or ts_ms >= current[0]:
                self.vectors[patient_id] = (ts_ms, event_id, np.asarray(values, dtype=np.float64))
                written += 1
        if landed is not None:
            landed(list(pending))
        return written


class OnlineStore(_Coalescing):
    """Redis writes, from a thread (`write`) or from an event loop (`write_async`, no thread hand-offs).

    A write sends its script calls together, then reads their replies in turn: `landed`, if given, is called
    with the patients of each call as its reply comes (Redis holds their vector, or a newer one, from then on)."""

    def __init__(self, client: redis.Redis | None = None, ttl_seconds: int = TTL_SECONDS,
                 async_client: redis.asyncio.Redis | None = None) -> None:
        super().__init__()
        if client is None and async_client is None:
            raise ValueError("an OnlineStore needs a Redis client, sync or async")
        self.client = client
        self.ttl_seconds = ttl_seconds
        self._async_client = async_client
        self._async_order: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str) -> "OnlineStore":
        """A store with a sync client that resends a write's unanswered calls after a lost connection (3 times,
        backing off 0.2-0.8 s)."""
        return cls(redis.Redis.from_url(url, retry=redis.retry.Retry(ExponentialBackoff(cap=2.0, base=0.1), 3)))

    def _packed_calls(self, pending: Pending) -> list[tuple[bytes, list[str]]]:
        """The script calls that write `pending`, VECTORS_PER_CALL vectors each: packed, with their patients."""
        items = list(pending.items())
        head = (b"EVAL", _SCRIPT)
        meta = (b"%d" % self.ttl_seconds, FEATURE_VERSION.encode())
        calls = []
        for start in range(0, len(items), VECTORS_PER_CALL):
            chunk = items[start:start + VECTORS_PER_CALL]
            args = [*head, b"%d" % len(chunk), *(features_key(patient_id).encode() for patient_id, _ in chunk), *meta]
            for _, (ts_ms, event_id, values) in chunk:
                args += (b"%d" % ts_ms, iso_ms(ts_ms).encode(), event_id.encode(), features_text(values))
            calls.append((_command(*args), [patient_id for patient_id, _ in chunk]))
        return calls

    def write(self, pending: Pending, landed: Landed | None = None) -> int:
        """Write vectors; returns how many were newer and written. Thread-safe."""
        if self.client is None:
            raise RuntimeError("this OnlineStore was made without a sync client")
        if not pending:
            return 0
        calls = _Calls(self._packed_calls(pending), landed)
        pool = self.client.connection_pool
        connection = pool.get_connection()

        def attempt() -> None:
            connection.send_packed_command(calls.unanswered())
            for _ in range(calls.unanswered_count):
                calls.answered(connection.read_response())

        try:
            # The client's retry policy on connection errors; a retry resends the calls not answered yet
            # (conditional writes: one that landed without its reply lands again harmlessly).
            connection.retry.call_with_retry(attempt, lambda error: connection.disconnect())
            return calls.written
        except BaseException:
            connection.disconnect()  # replies left unread (after an error reply) go with it
            raise
        finally:
            pool.release(connection)

    async def write_async(self, pending: Pending, landed: Landed | None = None) -> int:
        """`write` on the event loop. Calls land in the order they were made (ties at the same event time go
        to the later vector), however their awaits interleave."""
        if self._async_client is None:
            raise RuntimeError("this OnlineStore was made without an async client")
        if not pending:
            return 0
        if self._async_order is None:
            self._async_order = asyncio.Lock()  # FIFO: waiters acquire in arrival order
        async with self._async_order:
            calls = _Calls(self._packed_calls(pending), landed)
            pool = self._async_client.connection_pool
            connection = await pool.get_connection()

            async def attempt() -> None:
                await connection.send_packed_command(calls.unanswered())
                for _ in range(calls.unanswered_count):
                    calls.answered(await connection.read_response())

            try:
                await connection.retry.call_with_retry(attempt, lambda error: connection.disconnect())
                return calls.written
            except BaseException:
                await connection.disconnect()
                raise
            finally:
                await pool.release(connection)


class _Calls:
    """The script calls of one write, and how many of them were answered so far."""

    def __init__(self, calls: list[tuple[bytes, list[str]]], landed: Landed | None) -> None:
        self._calls = calls
        self._landed = landed
        self._answered = 0
        self.written = 0

    def unanswered(self) -> list[bytes]:
        return [packed for packed, _ in self._calls[self._answered:]]

    @property
    def unanswered_count(self) -> int:
        return len(self._calls) - self._answered

    def answered(self, reply: bytes | int) -> None:
        """The next call's reply: the number of its vectors that were newer and written."""
        patients = self._calls[self._answered][1]
        self._answered += 1
        self.written += int(reply)
        if self._landed is not None:
            self._landed(patients)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*args: bytes) -> bytes:
    """One command in Redis's protocol (RESP)."""
    return b"*%d\r\n%s" % (len(args), b"".join(map(_bulk, args)))


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
