"""The Faust app's own wiring: what app.py changes about Faust's defaults reaches the running consumer."""
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

# Runs in a fresh interpreter: importing app registers agents and tables on a module-level app, which must
# not leak into the test process. Starts the worker's own aiokafka consumer against the real broker and
# reports the max wait its fetcher uses.
_PROBE = """
import asyncio, json
from faust.types import TP
from app import app, settings
from streams import topics
async def main():
    vitals, patients = (TP(topics.kafka_name(settings, t), 0) for t in (topics.VITALS, topics.PATIENTS))
    for tp in (vitals, patients):  # the fetch loop saw offsets 5-8 skipped
        await app.consumer._add_gap(tp, 5, 8)
    gaps = {tp.topic.rsplit(".", 1)[-1]: sorted((i.begin, i.end) for i in app.consumer._gap.get(tp, ()))
            for tp in (vitals, patients)}
    # The clinical topics' records go straight into the agent's inbox; other topics' through Faust's channels.
    delivery = {tp.topic.rsplit(".", 1)[-1]: getattr(handler := app.topics._build_handler(tp, set()), "__qualname__",
                                                     type(handler).__name__)
                for tp in (vitals, TP(topics.kafka_name(settings, topics.DEADLETTER), 0))}
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        print(json.dumps({"gaps": gaps, "consumer": type(app.consumer).__name__, "delivery": delivery,
                          "conductor": type(app.topics).__name__,
                          "fetch_max_wait_ms": consumer._fetcher._fetch_max_wait_ms,
                          "fetch_min_bytes": consumer._fetcher._fetch_min_bytes}))
    finally:
        await consumer.stop()
asyncio.run(main())
"""


def test_worker_consumer_settings_and_no_commits_past_skipped_records(stack: Settings, unique: str, tmp_path: Path) -> None:
    # Faust hardcodes 1,500 ms; a fetch parked that long on quiet topics delays busy ones just as long. And
    # Faust counts offsets its fetch loop saw skipped as done (then commits past them): only in compacted topics.
    env = {**os.environ, "VITALSTREAM_FETCH_MAX_WAIT_MS": "37", "VITALSTREAM_FETCH_MIN_BYTES": "4321", "VITALSTREAM_APP_ID": f"probe-{unique}",
           "VITALSTREAM_WORKER_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report.pop("gaps") == {"vitals": [], "patients": [[5, 9]]}  # only the compacted topic has real holes
    delivery = report.pop("delivery")
    assert delivery["vitals"] == "RecordInbox.handler.<locals>.on_message"
    assert "RecordInbox" not in delivery["deadletter"]
    assert report == {"consumer": "VitalStreamConsumer", "conductor": "VitalStreamConductor",
                      "fetch_max_wait_ms": 37, "fetch_min_bytes": 4321}
    assert Settings().fetch_max_wait_ms < 1500  # the default bounds the delay well below Faust's




# The fetch watchdog must run from a revocation on, before any batch of the new assignment: a worker whose every
# record was out of sequence (sought back, then nothing delivered) never got that batch and sat idle for good
# (bench/stream_throughput.py, two workers starting on a backlog). Not while Faust's recovery has the
# partitions paused, though.
_WATCHDOG_PROBE = """
import asyncio, json
import agents.clinical as clinical
from app import app
watchdog, calls = clinical._watch_fetching, []
async def recording(live):
    calls.append(live.revoked)
clinical._watch_fetching = recording
async def main():
    live = clinical._live = clinical._LiveState()
    live.revoked = True
    await clinical._on_tick()
    app.rebalancing = True
    live.quiet = {"some partition": (0, 0.0)}
    await watchdog(live)  # returns before asking the (unstarted) consumer anything
    print(json.dumps({"ticks_watched": calls, "quiet_after_recovery_tick": len(live.quiet)}))
asyncio.run(main())
"""


def test_fetch_watchdog_runs_after_a_revocation_but_not_during_recovery(stack: Settings, unique: str,
                                                                        tmp_path: Path) -> None:
    env = {**os.environ, "VITALSTREAM_APP_ID": f"probe-{unique}", "VITALSTREAM_WORKER_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _WATCHDOG_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"ticks_watched": [True], "quiet_after_recovery_tick": 0}
