"""Sinks against the real services: the Redis online store and the lake on S3 and on a local folder."""
from __future__ import annotations

import asyncio

from datetime import date

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from sinks.lake import Lake, cleanup
from sinks.offline import OfflineFeatureSink, read_offline
from sinks.online import (
    _WRITE_IF_NEWER,
    VECTORS_PER_CALL,
    OnlineStore,
    features_key,
    features_text,
    read_features,
)
from sinks.partitioned import OffsetTrackedSink
from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES

pytestmark = pytest.mark.stack


@pytest.fixture(params=["s3", "file"])
def lake(request, stack, unique, tmp_path) -> Lake:
    uri = f"s3://{stack.lake_bucket}/tests/{unique}" if request.param == "s3" else f"file://{tmp_path}/lake"
    return Lake.from_settings(stack, uri)


@pytest.fixture
def client(stack) -> redis.Redis:
    c = redis.Redis.from_url(stack.redis_url.rsplit("/", 1)[0] + "/15")
    c.flushdb()
    yield c
    c.flushdb()


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=N_FEATURES)
    v[::7] = np.nan  # undefined features
    return v


def test_online_store_roundtrip_ttl_and_registry_order(client):
    store = OnlineStore(client)
    v = vector(1)
    store.add("PT00001", 1_772_366_400_000, "ev-1", v)
    assert store.flush() == 1
    values, meta = read_features(client, "PT00001")
    assert np.array_equal(values, v, equal_nan=True)  # exact float64 round trip, NaN kept
    assert meta == {"updated_at": "2026-03-01T12:00:00.000Z", "updated_at_ms": "1772366400000", "event_id": "ev-1",
                    "feature_version": FEATURE_VERSION}
    assert 47 * 3600 < client.ttl(features_key("PT00001")) <= 48 * 3600
    assert client.hlen(features_key("PT00001")) == N_FEATURES + 4


@pytest.mark.parametrize("specials", [[1e-320, -0.0, 1.7976931348623157e308, 1 / 3], [np.inf, -np.inf, np.nan, 0.1]])
def test_online_store_round_trips_extreme_values_exactly(client, specials):
    store = OnlineStore(client)
    v = vector(2)
    v[: len(specials)] = specials
    store.add("PT00002", 1_772_366_400_000, "ev-2", v)
    assert store.flush() == 1
    assert np.array_equal(read_features(client, "PT00002")[0], v, equal_nan=True)


@pytest.mark.parametrize("head, text", [
    ([0.1, 80.0, np.nan, -1234.5678], [b"0.1", b"80.0", b"nan", b"-1234.5678"]),  # orjson's text
    ([0.1, np.inf, -np.inf, np.nan], [b"0.1", b"inf", b"-inf", b"nan"]),  # infinities: Python's repr
])
def test_online_store_keeps_values_as_shortest_round_trip_text(client, head, text):
    v = vector(4)
    v[: len(head)] = head
    OnlineStore(client).write({"PT00004": (1_772_366_400_000, "ev-4", v)})
    assert client.hmget(features_key("PT00004"), FEATURE_NAMES[: len(head)]) == text
    assert np.array_equal(read_features(client, "PT00004")[0], v, equal_nan=True)


def test_features_text_checks_its_input_and_the_script_its_count(client):
    assert features_text(np.zeros(N_FEATURES)).count(b",") == N_FEATURES - 1
    assert features_text(np.arange(2.0 * N_FEATURES)[::2]).startswith(b"0.0,2.0,4.0,")  # a strided view
    with pytest.raises(ValueError, match=f"{N_FEATURES} values"):
        features_text(np.zeros(N_FEATURES - 1))
    with pytest.raises(ValueError, match=f"{N_FEATURES} values"):  # before anything is sent
        OnlineStore(client).write({"PT00005": (1, "ev-5", np.zeros(N_FEATURES + 1))})
    with pytest.raises(redis.ResponseError, match=f"has 2 values, expected {N_FEATURES}"):
        client.eval(_WRITE_IF_NEWER, 1, features_key("PT00005"), 60, FEATURE_VERSION, 1, "iso", "ev-5", b"1.0,2.0")
    assert not client.exists(features_key("PT00005"))


def test_online_store_never_overwrites_newer_with_older(client):
    store = OnlineStore(client)
    newer, older = vector(2), vector(3)
    store.add("PT00002", 2_000, "new", newer)
    store.flush()
    client.expire(features_key("PT00002"), 100)
    store.add("PT00002", 1_000, "old", older)  # e.g. a replay of older history
    assert store.flush() == 0
    values, meta = read_features(client, "PT00002")
    assert meta["event_id"] == "new" and np.array_equal(values, newer, equal_nan=True)
    store.add("PT00002", 2_000, "same-time-later-event", older)  # same event time: the later update wins
    assert store.flush() == 1
    assert read_features(client, "PT00002")[1]["event_id"] == "same-time-later-event"
    assert client.ttl(features_key("PT00002")) > 100  # refreshed on write


def test_online_store_writes_many_vectors_per_call_each_on_its_own_rule(client):
    store = OnlineStore(client)
    n = 2 * VECTORS_PER_CALL + 5  # three script calls, the last one partly filled
    for i in range(0, n, 3):  # every third patient already holds a newer vector
        store.add(f"PT{i:05d}", 5_000, "newer", vector(i))
    store.flush()
    for i in range(n):
        store.add(f"PT{i:05d}", 4_000, f"e{i}", vector(1000 + i))
    landed = []  # each call's patients, as its reply comes: then they are readable
    assert store.write(store.take(), lambda patients: landed.append(
        (patients, client.hmget(features_key(patients[-1]), "updated_at_ms")[0]))) == n - len(range(0, n, 3))
    calls = [[f"PT{i:05d}" for i in range(start, min(start + VECTORS_PER_CALL, n))]
             for start in range(0, n, VECTORS_PER_CALL)]
    assert [patients for patients, _ in landed] == calls
    assert [stored for _, stored in landed] == [b"5000", b"4000", b"5000"]  # PT00063 and PT00132 held newer ones
    for i in range(n):
        values, meta = read_features(client, f"PT{i:05d}")
        expected = ("newer", vector(i)) if i % 3 == 0 else (f"e{i}", vector(1000 + i))
        assert meta["event_id"] == expected[0] and np.array_equal(values, expected[1], equal_nan=True)
        assert client.ttl(features_key(f"PT{i:05d}")) > 47 * 3600


def test_online_store_async_writes_land_in_call_order_with_the_same_rules(client):
    url = client.connection_pool.connection_kwargs
    async_client = redis.asyncio.Redis(host=url["host"], port=url["port"], db=url["db"])
    store = OnlineStore(client, async_client=async_client)
    n = VECTORS_PER_CALL + 3
    older = {f"PT{i:05d}": (1_000, f"old{i}", vector(i)) for i in range(n)}
    newer = {f"PT{i:05d}": (2_000, f"new{i}", vector(100 + i)) for i in range(n)}
    tie = {"PT00000": (2_000, "tie-later", vector(7))}

    async def writes() -> list[int]:
        try:  # started together: each lands after the ones started before it
            return list(await asyncio.gather(store.write_async(older), store.write_async(newer),
                                             store.write_async(tie), store.write_async(older)))
        finally:
            await async_client.aclose()

    assert asyncio.run(writes()) == [n, n, 1, 0]
    assert read_features(client, "PT00000")[1]["event_id"] == "tie-later"
    for i in range(1, n):
        values, meta = read_features(client, f"PT{i:05d}")
        assert meta["event_id"] == f"new{i}" and np.array_equal(values, vector(100 + i), equal_nan=True)
    with pytest.raises(RuntimeError, match="without an async client"):
        asyncio.run(OnlineStore(client).write_async(older))
    with pytest.raises(RuntimeError, match="without a sync client"):  # the worker's store: async only
        OnlineStore(async_client=redis.asyncio.Redis()).write(older)  # (never connects)
    with pytest.raises(ValueError, match="needs a Redis client"):
        OnlineStore()


def test_online_store_async_writes_survive_a_flushed_script_cache(client):
    """The worker sends the script's text with each call: after Redis forgot the script (restart, SCRIPT FLUSH)
    writes land as before, once."""
    url = client.connection_pool.connection_kwargs
    store = OnlineStore(async_client=redis.asyncio.Redis(host=url["host"], port=url["port"], db=url["db"]))
    n = VECTORS_PER_CALL + 1

    async def write(vectors) -> int:  # noqa: ANN001
        client.script_flush()
        return await store.write_async(vectors)

    async def writes() -> list[int]:
        try:
            return [await write({f"PT{i:05d}": (1_000 * k, f"e{k}-{i}", vector(k + i)) for i in range(n)})
                    for k in (1, 2)]
        finally:
            await store._async_client.aclose()

    assert asyncio.run(writes()) == [n, n]
    for i in range(n):
        values, meta = read_features(client, f"PT{i:05d}")
        assert meta["event_id"] == f"e2-{i}" and np.array_equal(values, vector(2 + i), equal_nan=True)


def test_online_store_sync_writes_survive_a_flushed_script_cache(client):
    store = OnlineStore(client)
    client.script_flush()
    assert store.write({"PT00001": (1_000, "e1", vector(1))}) == 1
    client.script_flush()
    assert store.write({"PT00001": (2_000, "e2", vector(2))}) == 1
    values, meta = read_features(client, "PT00001")
    assert meta["event_id"] == "e2" and np.array_equal(values, vector(2), equal_nan=True)


class _LosesOneReply:
    """A connection's read_response that loses the connection once, after the first script call's reply, and
    records the script calls' replies and the `landed` calls in the order they happen."""

    def __init__(self, read, is_async: bool) -> None:  # noqa: ANN001
        self.read, self.events = read, []
        self.replies = []  # the script calls' (connecting reads the handshake's replies too)

        def before() -> None:
            if self.replies == [VECTORS_PER_CALL]:
                self.replies.append("lost")
                raise redis.ConnectionError("connection lost (injected)")

        def after(reply):  # noqa: ANN001, ANN202
            if isinstance(reply, int):
                self.replies.append(reply)
                self.events.append(("reply", reply))
            return reply

        if is_async:
            async def read_response(connection, *args, **kwargs):  # noqa: ANN001, ANN202
                before()
                return after(await read(connection, *args, **kwargs))
        else:
            def read_response(connection, *args, **kwargs):  # noqa: ANN001, ANN202
                before()
                return after(read(connection, *args, **kwargs))
        self.read_response = read_response

    def landed(self, patients: list[str]) -> None:
        self.events.append(("landed", patients))


def _check_resent(flaky: _LosesOneReply, client: redis.Redis, n: int) -> None:
    assert flaky.replies == [VECTORS_PER_CALL, "lost", VECTORS_PER_CALL, 1]  # the first call not sent again
    calls = [[f"PT{i:05d}" for i in range(start, min(start + VECTORS_PER_CALL, n))]
             for start in range(0, n, VECTORS_PER_CALL)]
    # Each call's patients once, as its reply comes (before the next reply is read).
    answered = [reply for reply in flaky.replies if reply != "lost"]
    assert flaky.events == [event for reply, patients in zip(answered, calls) for event in (("reply", reply),
                                                                                          ("landed", patients))]
    for i in range(n):
        values, meta = read_features(client, f"PT{i:05d}")
        assert meta["event_id"] == f"e{i}" and np.array_equal(values, vector(i), equal_nan=True)


def test_online_store_resends_unanswered_calls_after_a_connection_error(client, monkeypatch):
    """A connection lost mid-write (here: before the second call's reply) is retried by the client's policy;
    only the calls not answered yet go again, so each call's patients are reported landed once."""
    url = client.connection_pool.connection_kwargs
    store = OnlineStore(redis.Redis(host=url["host"], port=url["port"], db=url["db"], retry=Retry(NoBackoff(), 1)))
    n = 2 * VECTORS_PER_CALL + 1
    flaky = _LosesOneReply(redis.connection.Connection.read_response, is_async=False)
    monkeypatch.setattr(redis.connection.Connection, "read_response", flaky.read_response)
    assert store.write({f"PT{i:05d}": (1_000, f"e{i}", vector(i)) for i in range(n)}, flaky.landed) == n
    monkeypatch.undo()
    _check_resent(flaky, client, n)


def test_online_store_async_resends_unanswered_calls_after_a_connection_error(client, monkeypatch):
    """The worker's path: the same, on an asyncio client."""
    url = client.connection_pool.connection_kwargs
    async_client = redis.asyncio.Redis(host=url["host"], port=url["port"], db=url["db"],
                                       retry=redis.asyncio.retry.Retry(NoBackoff(), 1))
    store = OnlineStore(async_client=async_client)
    n = 2 * VECTORS_PER_CALL + 1
    flaky = _LosesOneReply(redis.asyncio.connection.Connection.read_response, is_async=True)
    monkeypatch.setattr(redis.asyncio.connection.Connection, "read_response", flaky.read_response)

    async def write() -> int:
        try:
            return await store.write_async({f"PT{i:05d}": (1_000, f"e{i}", vector(i)) for i in range(n)},
                                           flaky.landed)
        finally:
            await async_client.aclose()

    assert asyncio.run(write()) == n
    monkeypatch.undo()
    _check_resent(flaky, client, n)


def test_online_store_coalesces_to_latest_per_patient(client):
    store = OnlineStore(client)
    for i in range(5):
        store.add("PT00003", 1_000 + i, f"e{i}", vector(i))
    assert store.buffered == 1
    store.flush()
    assert read_features(client, "PT00003")[1]["event_id"] == "e4"


def _rows(sink: OfflineFeatureSink, day_ms: int, offsets: range) -> None:
    for o in offsets:
        sink.add_row("clinical.vitals", 0, o, f"PT{o % 3:05d}", day_ms + o * 60_000, f"e{o}", vector(o))
        sink.advance("clinical.vitals", 0, o)


def test_offline_store_readable_by_date_with_pyarrow_pandas_duckdb(lake):
    sink = OfflineFeatureSink(lake)
    d1, d2 = 1_772_323_200_000, 1_772_409_600_000  # 2026-03-01 and 2026-03-02, 00:00 UTC
    _rows(sink, d1, range(0, 10))
    _rows(sink, d2 - 10 * 60_000, range(10, 20))  # these land on 2026-03-02
    sink.flush()
    assert read_offline(lake).num_rows == 20
    assert read_offline(lake, "2026-03-02", "2026-03-02").num_rows == 10
    table = read_offline(lake, "2026-03-01", "2026-03-01")
    assert table.column_names[:7] == ["patient_id", "timestamp", "event_id", "source_topic", "source_partition",
                                      "source_offset", "feature_version"]
    assert table.column_names[7:7 + N_FEATURES] == list(FEATURE_NAMES)
    df = table.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 10 and str(df["timestamp"].dt.tz) == "UTC"
    # Plain pyarrow.dataset with hive partitioning, and duckdb over that dataset.
    dataset = ds.dataset(lake.full("features/offline"), filesystem=lake.fs, format="parquet", partitioning="hive")
    assert dataset.to_table(filter=ds.field("date") == "2026-03-02").num_rows == 10
    con = duckdb.connect()
    con.register("offline", dataset)
    assert con.execute("SELECT count(*) FROM offline WHERE date = '2026-03-01'").fetchone()[0] == 10


def test_retried_batch_neither_duplicates_nor_loses(lake):
    sink = OfflineFeatureSink(lake)
    day = 1_772_323_200_000
    _rows(sink, day, range(0, 10))
    sink.flush()
    # A flush that crashed after writing its object but before its watermark marker.
    _rows(sink, day, range(10, 15))
    for path, rows in sink.seal().objects:
        lake.put(path, sink.encode(rows))
    # A restarted worker: recovers (deleting the orphan), then sees everything from offset 5 again.
    restarted = OfflineFeatureSink(lake)
    assert not restarted.accepts("clinical.vitals", 0, 9) and restarted.accepts("clinical.vitals", 0, 10)
    for o in range(5, 20):
        if restarted.accepts("clinical.vitals", 0, o):
            _rows(restarted, day, range(o, o + 1))
    restarted.flush()
    offsets = sorted(read_offline(lake).column("source_offset").to_pylist())
    assert offsets == list(range(20))


def test_lake_cleanup_applies_retention(lake):
    for path in ("raw/clinical.vitals/date=2026-01-01/hour=00/a.ndjson",
                 "raw/clinical.vitals/date=2026-05-01/hour=00/b.ndjson",
                 "processed/clinical.vitals/date=2024-01-01/c.parquet",
                 "processed/clinical.vitals/date=2026-01-01/d.parquet"):
        lake.put(path, b"x")
    assert cleanup(lake, today=date(2026, 6, 1), dry_run=True) == {"raw/": 1, "processed/": 1}
    assert len(lake.list("")) == 4
    cleanup(lake, today=date(2026, 6, 1))
    assert sorted(o.path for o in lake.list("")) == ["processed/clinical.vitals/date=2026-01-01/d.parquet",
                                                     "raw/clinical.vitals/date=2026-05-01/hour=00/b.ndjson"]


def test_atomic_local_writes_leave_no_temp_files(tmp_path, stack):
    lake = Lake.from_settings(stack, f"file://{tmp_path}/lake")
    sink = OffsetTrackedSink(lake, "t", "x", "bin", lambda rows: b"".join(rows))
    sink.add("topic", 0, 1, "d", b"a")
    sink.flush()
    assert [p.name for p in (tmp_path / "lake").rglob("*") if p.name.startswith(".tmp-")] == []


def test_replay_manifest_supersedes_live_rows_atomically(lake):
    from sinks.offline import PREFIX, commit_replay, encode_rows, replay_object_name
    from sinks.partitioned import object_name

    day, ts = "2026-03-01", 1_772_366_400_000
    d = f"{PREFIX}/date={day}"

    def rows(offsets, tag=0.0):
        return [(f"P{o % 3}", ts + o, f"e{o}", "clinical.vitals", 0, o, vector(o) + tag) for o in offsets]

    def put(path, offsets, tag=0.0):
        lake.put(path, encode_rows(rows(offsets, tag)))

    def offsets() -> list[int]:
        return sorted(read_offline(lake, day, day)["source_offset"].to_pylist())

    put(f"{d}/{object_name('clinical.vitals', 0, 0, 9, 'parquet')}", range(0, 10))  # live, superseded
    put(f"{d}/{object_name('clinical.vitals', 0, 10, 19, 'parquet')}", range(10, 20))  # straddles the end
    put(f"{d}/{replay_object_name('aaa', 0)}", range(0, 15), tag=1.0)  # replay A, not committed yet
    assert offsets() == list(range(20)), "an uncommitted replay object was read"
    put(f"{d}/{replay_object_name('bbb', 0)}", range(0, 15), tag=2.0)  # replay B, concurrently
    deleted = commit_replay(lake, day, "aaa", [f"{d}/{replay_object_name('aaa', 0)}"], {"clinical.vitals-p000": 14})
    assert deleted == 1  # the superseded live object; B's uncommitted object is not A's to delete
    table = read_offline(lake, day, day)
    assert sorted(table["source_offset"].to_pylist()) == list(range(20))  # replay 0-14 + live tail 15-19
    j = next(i for i in range(N_FEATURES) if np.isfinite(vector(3)[i]) and np.isfinite(vector(17)[i]))
    got = dict(zip(table["source_offset"].to_pylist(), table[FEATURE_NAMES[j]].to_pylist()))
    assert got[3] == vector(3)[j] + 1.0 and got[17] == vector(17)[j]
    # B commits after A: A's objects go, B's rows are read.
    commit_replay(lake, day, "bbb", [f"{d}/{replay_object_name('bbb', 0)}"], {"clinical.vitals-p000": 14})
    assert offsets() == list(range(20))
    assert not any("replay-aaa" in o.path for o in lake.list(d))
    got = dict(zip(*(read_offline(lake, day, day)[c].to_pylist() for c in ("source_offset", FEATURE_NAMES[j]))))
    assert got[3] == vector(3)[j] + 2.0


def test_recovery_of_a_whole_assignment_at_once(lake):
    # Two partitions, each with a flush cut short (object written, watermark not), and one never written:
    # one recover() call (one listing) restores every watermark and removes both orphans.
    day = 1_772_323_200_000
    sink = OfflineFeatureSink(lake)
    for partition in (0, 1):
        for o in range(0, 5):
            sink.add_row("clinical.vitals", partition, o, f"PT{o}", day + o, f"e{partition}-{o}", vector(o))
    sink.flush()
    for partition in (0, 1):
        for o in range(5, 8):
            sink.add_row("clinical.vitals", partition, o, f"PT{o}", day + o, f"e{partition}-{o}", vector(o))
    for path, rows in sink.seal().objects:
        lake.put(path, sink.encode(rows))
    assert read_offline(lake).num_rows == 16
    restarted = OfflineFeatureSink(lake)
    tps = [("clinical.vitals", 0), ("clinical.vitals", 1), ("clinical.vitals", 2)]
    restarted.recover(tps)
    assert [restarted.watermark(tp) for tp in tps] == [4, 4, -1]
    assert read_offline(lake).num_rows == 10  # the orphans (offsets 5-7 of both partitions) are gone
    assert not restarted.accepts("clinical.vitals", 1, 4) and restarted.accepts("clinical.vitals", 1, 5)
