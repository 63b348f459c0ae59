"""`vitalstream replay` on the real stack: parity with the live worker, idempotence, parallelism, errors."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from agents.replay import ReplayError, plan_replay, run_replay
from streams.timestamps import DAY_MS
from sinks.lake import Lake
from sinks.offline import MANIFEST, PREFIX
from sinks.online import read_features
from simulator.config import SimulationConfig
from simulator.model import iter_records
from tables.features.registry import RECALL_MS
from tests.harness import (WorkerProcess, count_offline, in_merge_order, offline_rows, produce, run_oracle,
                           same_vector, wait_for)

pytestmark = pytest.mark.stack

DAYS = 10  # longer than the replay's warm-up (7 days + lateness), so the warm-up really is cut short


def history(seed: int, ends_days_ago: int = 2) -> tuple[list, datetime]:
    start = (datetime.now(timezone.utc) - timedelta(days=DAYS + ends_days_ago)).replace(
        hour=0, minute=0, second=0, microsecond=0)
    cfg = SimulationConfig(seed=seed, n_patients=14, start=start, days=DAYS, fraction_monitored=0.0,
                           fraction_device=0.15, hazard_scale=3.0)
    return [(r.topic, r.key, r.value, r.timestamp_ms) for r in iter_records(cfg)], start


def same_bits(a, b) -> bool:
    """Equal tables, floats compared by their bits (-0.0 is not 0.0; NaN payloads count)."""
    if a.num_rows != b.num_rows or a.column_names != b.column_names:
        return False
    for name in a.column_names:
        x, y = a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False)
        if x.dtype == np.float64:
            x, y = x.view(np.uint64), y.view(np.uint64)
        if not np.array_equal(x, y):
            return False
    return True


def objects_of(lake: Lake, day: str) -> dict[str, bytes]:
    return {o.path: lake.get(o.path) for o in lake.list(f"{PREFIX}/date={day}")}


def test_replay_equals_live_rows_bit_for_bit_and_is_idempotent(env, tmp_path):
    settings, client, workers = env
    items, start = history(seed=21)
    produced = produce(settings, items)
    oracle = run_oracle(settings, in_merge_order(produced), tmp_path / "oracle-lake")
    lake = Lake.from_settings(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    worker.wait_ready()
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 240, "the live worker to write every row")

    def redis_done() -> bool:
        got = {pid: read_features(client, pid) for pid in oracle.online}
        return all(g is not None and int(g[1]["updated_at_ms"]) == oracle.online[pid][0] for pid, g in got.items())

    wait_for(redis_done, 60, "the live worker's last Redis writes")
    worker.stop()
    live_online = {k.decode().split(":")[1]: read_features(client, k.decode().split(":")[1])
                   for k in client.scan_iter("patient:*:features")}

    # The last two simulated days: the warm-up (7 days + 1 h) starts after the history does.
    first_day = start + timedelta(days=DAYS - 2)
    rows_from = int(first_day.timestamp() * 1000)
    rows_to = rows_from + 2 * DAY_MS
    assert rows_from - RECALL_MS - settings.allowed_lateness_ms > int(start.timestamp() * 1000)
    days = [f"{first_day + timedelta(days=i):%Y-%m-%d}" for i in range(2)]
    live = offline_rows(lake, days[0], days[-1])
    before_range = offline_rows(lake, None, f"{first_day - timedelta(days=1):%Y-%m-%d}")
    assert live.num_rows > 500, "too few live rows for a meaningful comparison"

    plan = plan_replay(settings, rows_from, rows_to)
    assert plan.days == days
    report = run_replay(settings, plan, target="both", progress=False)
    assert report.rows == live.num_rows
    assert report.superseded_objects > 0, "the live objects of the replayed days were not superseded"
    replayed = offline_rows(lake, days[0], days[-1])
    assert replayed.num_rows == live.num_rows
    assert same_bits(live, replayed), "replayed rows differ from the live rows"
    # Days outside the range are untouched.
    assert before_range.num_rows > 0
    assert same_bits(offline_rows(lake, None, f"{first_day - timedelta(days=1):%Y-%m-%d}"), before_range)

    # Redis: the replay's vectors are older than the live ones, which must survive.
    for pid, (vector, meta) in live_online.items():
        got = read_features(client, pid)
        assert got is not None and got[1]["updated_at_ms"] == meta["updated_at_ms"], pid
        assert same_vector(got[0], vector), pid

    # The same replay again: the very same objects, byte for byte, and the same rows.
    before = {d: objects_of(lake, d) for d in days}
    again = run_replay(settings, plan_replay(settings, rows_from, rows_to), target="offline", workers=2,
                       progress=False)
    assert again.plan.plan_id == plan.plan_id
    assert {d: objects_of(lake, d) for d in days} == before
    assert again.superseded_objects == 0
    assert any(p.endswith(MANIFEST) for p in before[days[0]])
    assert same_bits(offline_rows(lake, days[0], days[-1]), live)


def test_replay_refreshes_redis_only_where_it_is_newer(env, tmp_path):
    settings, client, _ = env
    items, start = history(seed=22, ends_days_ago=0)  # today's vectors: within the online TTL
    produce(settings, items)
    end = int((start + timedelta(days=DAYS)).timestamp() * 1000)
    stale = run_replay(settings, plan_replay(settings, end - 5 * DAY_MS, end - 3 * DAY_MS, patients=["PT00001"]),
                       target="online", progress=False)
    assert stale.online_written == 0, "a vector older than the online TTL was brought back"
    plan = plan_replay(settings, end - 2 * DAY_MS, end, patients=["PT00001", "PT00002"])
    report = run_replay(settings, plan, target="online", progress=False)
    assert report.online_written == 2
    got = read_features(client, "PT00001")
    assert got is not None and np.isfinite(got[0]).any()
    assert read_features(client, "PT00003") is None, "a patient outside --patients was written"
    ts = int(got[1]["updated_at_ms"])
    # A newer vector (as a live worker would write) is never overwritten by a replay.
    client.hset("patient:PT00001:features", mapping={"updated_at_ms": ts + 1})
    again = run_replay(settings, plan, target="online", progress=False)
    assert again.online_written == 1
    assert int(read_features(client, "PT00001")[1]["updated_at_ms"]) == ts + 1


def test_replay_rejects_bad_requests_clearly(env):
    settings, _, _ = env
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    with pytest.raises(ReplayError, match="--to must be after --from"):
        plan_replay(settings, now, now - DAY_MS)
    plan = plan_replay(settings, now - DAY_MS, now, patients=["PT00001"])
    with pytest.raises(ReplayError, match="--target online"):
        run_replay(settings, plan, target="offline", progress=False)
    missing = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "absent."})
    with pytest.raises(ReplayError, match="does not exist"):
        plan_replay(missing, now - DAY_MS, now)


def test_cli_reports_bad_input_and_empty_stores_clearly(env, tmp_path):
    import subprocess
    import sys

    from tests.harness import REPO, settings_env

    settings, _, _ = env
    run = lambda *argv: subprocess.run([sys.executable, "-m", "vitalstream.cli", *argv], cwd=REPO,  # noqa: E731
                                       env=settings_env(settings), capture_output=True, text=True, timeout=300)
    bad = run("replay", "--from", "last tuesday")
    assert bad.returncode == 1 and "not an ISO date" in bad.stderr
    empty = run("replay", "--from", "2026-01-01", "--to", "2026-01-02", "--quiet")
    assert empty.returncode == 0, empty.stderr
    assert '"rows": 0' in empty.stdout
    no_rows = run("train", "--from", "2026-01-01", "--to", "2026-01-02", "--no-register", "--quiet")
    assert no_rows.returncode == 1 and "no offline feature rows" in no_rows.stderr
