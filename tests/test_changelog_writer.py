"""tables/faust_tables.py: ChangelogWriter against Faust's own table writes, on the real broker and RocksDB.

The worker writes its feature state with ChangelogWriter (RocksDB puts and producer batches) instead of
`table[key] = value` per key. Both must leave the same bytes in RocksDB and in the changelog (which Faust
reads back at recovery), in the same order, and the same persisted offsets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitalstream.settings import Settings

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent

# In a fresh interpreter: a Faust app (and its producer) of its own, two tables with two partitions each.
# "theirs" gets a generation through Faust's table API (FaustTableStore.apply_steps), "ours" the same
# generation through ChangelogWriter (apply_async). Small producer batches, so a partition's writes span many.
_PROBE = """
import asyncio, json, os, sys, time
T0 = time.monotonic()
def step(*what):  # progress on stderr, shown if the probe fails or times out
    print(f"{time.monotonic() - T0:7.2f} s", *what, file=sys.stderr, flush=True)
from types import SimpleNamespace
import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from tables.faust_tables import FaustTableStore
from tables.state import BucketRows
bootstrap, name, datadir = sys.argv[1:4]
app = faust.App(name, broker=f"kafka://{bootstrap}", store="rocksdb://", datadir=datadir, topic_partitions=2,
                autodiscover=False, web_enabled=False, producer_acks=-1, producer_max_batch_size=16384)
tables = {"theirs": app.Table("theirs", partitions=2), "ours": app.Table("ours", partitions=2)}
for table in tables.values():
    table._verified_source_topics_for_partitions.add("source")  # no consumer here to ask

def fill(store, round_):
    events = [SimpleNamespace(partition=0, topic="source"), SimpleNamespace(partition=1, topic="source")]
    for i in range(1200):  # more keys than ChangelogWriter writes between returns to the event loop
        store.bind(events[i % 2])
        if round_ == 1 and i % 3 == 0:
            store.delete(f"v|p{i}|0")  # a key present, retired
        elif round_ == 1 and i % 3 == 1:
            store.delete(f"v|p{i}|absent")  # never written: nothing to send
        elif i % 2:
            store.set(f"v|p{i}|{round_}", [[i, 1.5 * i, None, "monitor"]] * (1 + i % 7))
        else:  # a bucket as the engine writes it: versions that carry their JSON text (written by ours)
            rows = BucketRows.start((i, 0.1 * i, None, "monitor", True))
            for k in range(i % 7):
                rows = rows.appended((i + k, 1e-7 * k, "A", "nurse", None))
                if k == 2:
                    rows.json_bytes()  # an earlier version encoded: the written one extends its text
            store.set(f"v|p{i}|{round_}", rows)
        if i % 5 == 0:
            store.set(f"c|p{i}", {"t": i, "round": round_, "labs": {"alt": [1.25, 2.5]}})

async def changelog(table):
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(table.changelog_topic.get_topic_name(), p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        got = {tp.partition: [] for tp in tps}
        deadline = time.monotonic() + 60
        while sum(len(v) for v in got.values()) < sum(end.values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"read {sum(len(v) for v in got.values())} of {end} changelog records")
            for tp, msgs in (await consumer.getmany(timeout_ms=2000)).items():
                got[tp.partition] += [[m.key.decode(), m.value.decode() if m.value is not None else None]
                                      for m in msgs]
        return got
    finally:
        await consumer.stop()

async def main():
    await app.producer.start()
    step("producer started")
    report = {}
    for table in tables.values():
        await table.changelog_topic.maybe_declare()
    step("changelog topics declared")
    for round_ in (0, 1):
        for name, table in tables.items():
            store = FaustTableStore(table)
            fill(store, round_)
            generation = store.seal()
            if name == "theirs":
                written = store.apply(generation)
            else:
                written = await store.apply_async(generation)
            report.setdefault(name, {}).setdefault("written", []).append(written)
            step("round", round_, name, "applied", written)
    await app.producer.flush()
    step("producer flushed")
    for name, table in tables.items():
        topic = table.changelog_topic.get_topic_name()
        report[name]["changelog"] = await changelog(table)
        report[name]["rocksdb"] = {p: [[k.decode(), v.decode()] for k, v in table.data._db_for_partition(p).items()]
                                   for p in (0, 1)}
        report[name]["persisted"] = [table.data.persisted_offset(faust.types.TP(topic, p)) for p in (0, 1)]
        step(name, "read back")
    print(json.dumps(report), flush=True)
    step("reported")
    os._exit(0)  # what is compared is out; stopping the producer and tables is not what this tests

asyncio.run(main())
"""


def test_changelog_writer_leaves_what_faust_table_writes_leave(stack: Settings, unique: str, tmp_path: Path) -> None:
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, stack.kafka_bootstrap, f"probe-{unique}", str(tmp_path)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                             timeout=180)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the probe did not finish; its progress:\n{exc.stderr}") from None
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    theirs, ours = report["theirs"], report["ours"]
    assert ours["written"] == theirs["written"] and theirs["written"][0] == 1200 + 240
    for p in ("0", "1"):
        log = theirs["changelog"][p]
        assert ours["changelog"][p] == log, f"partition {p}'s changelog differs"
        assert len(log) > 60 and any(value is None for _, value in log)  # many batches' worth, with tombstones
        keys = [key for key, _ in log]
        assert keys.index(next(k for k in keys if k.startswith('"c|'))) > 0  # rows go before contexts
    assert ours["rocksdb"] == theirs["rocksdb"]  # incl. Faust's persisted-offset key
    assert ours["persisted"] == theirs["persisted"] == [len(theirs["changelog"][p]) - 1 for p in ("0", "1")]
