"""Process-wide tuning of the worker (vitalstream/process.py)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fresh_interpreter(code: str) -> list[str]:
    """The lines `code` prints in a fresh interpreter: tuning the test process would last for its whole life."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_tune_gc_raises_the_young_threshold_and_freezes_startup_objects():
    code = ("import gc, json; from vitalstream.process import tune_gc; from vitalstream.settings import Settings\n"
            "before = gc.get_threshold()[0]; tune_gc(Settings(gc_gen0_threshold=12345))\n"
            "print(json.dumps([before, gc.get_threshold()[0], gc.get_freeze_count()]))\n"
            "tune_gc(Settings(gc_gen0_threshold=0)); print(gc.get_threshold()[0])")
    first, second = fresh_interpreter(code)
    before, after, frozen = json.loads(first)
    assert (before, after) == (700, 12345) and frozen > 1000
    assert int(second) == 12345  # 0 leaves the threshold as it is


def test_the_worker_app_tunes_gc_and_the_gil_when_imported():
    code = "import gc, sys; import app; print(gc.get_threshold()[0], gc.get_freeze_count(), sys.getswitchinterval())"
    threshold, frozen, interval = fresh_interpreter(code)[-1].split()
    assert int(threshold) == 50_000 and int(frozen) > 10_000
    assert float(interval) == 0.001


def test_tune_gil_sets_the_switch_interval_and_zero_leaves_it():
    code = ("import sys; from vitalstream.process import tune_gil; from vitalstream.settings import Settings\n"
            "before = sys.getswitchinterval(); tune_gil(Settings(gil_switch_interval_ms=2.5)); "
            "print(before, sys.getswitchinterval()); tune_gil(Settings(gil_switch_interval_ms=0)); "
            "print(sys.getswitchinterval())")
    first, second = fresh_interpreter(code)
    assert [float(x) for x in first.split()] == [0.005, 0.0025]
    assert float(second) == 0.0025


def test_the_build_statuses_are_logged(caplog):
    from vitalstream import compiled, process

    with caplog.at_level(logging.INFO, logger="vitalstream.process"):
        process.log_build_statuses()
    statuses = compiled.build_statuses()
    if all(status == "compiled" for status in statuses.values()):
        assert caplog.text.count("compiled modules in use") == 1
        assert all(module in caplog.text for module in statuses)
    else:
        assert "not running compiled" in caplog.text
