"""Failover stress: one of two workers killed (-9) mid-stream; the survivor must end where an uninterrupted run
ends. Not part of the suite (file name outside test_*.py): it failed about one run in ten before the fixes of
2026-11-26 and passed 20 in a row after them, then 30 more with session 5's changes (inline delivery, batched
changelog writes, 25 ms waits); not yet proof enough for CI (issue 3, see docs/status.md). Run it on the local
stack, repeatedly:

    for i in $(seq 10); do python -m pytest -q tests/stress_failover.py || break; done
"""
from __future__ import annotations

from tests.harness import WorkerProcess, count_offline, scrape_metrics, wait_for
from tests.test_worker_e2e import assert_matches_oracle, second_worker, simulated_backlog


def test_one_of_two_workers_killed_mid_stream_the_other_takes_over(env, tmp_path):
    # Two workers share the partitions; one dies hard. The survivor is assigned its partitions, restores their
    # feature state from the changelog and redoes the uncommitted records: the end state is the oracle's.
    settings, client, workers, oracle, lake = simulated_backlog(env, tmp_path, seed=14, patients=24, hours=24)
    first = WorkerProcess(settings, tmp_path / "worker1.log").start()
    workers.append(first)
    first.wait_ready()  # one at a time: a worker whose first assignment is cut by a rebalance never logs Ready
    second = second_worker(settings, tmp_path).start()
    workers.append(second)
    second.wait_ready()
    second_settings = second.settings

    def second_consumed() -> float:
        return sum(v for k, v in scrape_metrics(second_settings).items() if k.startswith("vitalstream_events_in_total"))

    wait_for(lambda: second_consumed() > 0, 120, "the second worker to process records")
    assert count_offline(lake) < oracle.offline_rows, "the workers finished before one could be killed"
    second.kill9()
    wait_for(lambda: count_offline(lake) >= oracle.offline_rows, 300, "the surviving worker to finish")
    assert_matches_oracle(settings, oracle, lake, client)
    assert first.proc.poll() is None, "the surviving worker died"
