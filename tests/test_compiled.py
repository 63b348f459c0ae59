"""The mypyc builds of the hot modules (setup.py, vitalstream/compiled.py): in use, and equal to their sources.

A compiled module must compute exactly what its .py source computes; the source stays the one definition.
The parity test runs the feature engine on the same events twice, in subprocesses: on the installed builds,
and on a copy of the sources with no builds; the vectors must be identical to the bit.
"""
from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from vitalstream.compiled import (COMPILED_MODULES, build_status, build_statuses, copy_sources,
                                  pure_python_requested, stray_builds)

ROOT = Path(__file__).resolve().parents[1]
_SUFFIX = next(s for s in importlib.machinery.EXTENSION_SUFFIXES if s.endswith(".so"))

_ENGINE_RUN = r"""
import dataclasses, random, sys
from collections import Counter
import numpy as np
from test_features_engine import long_stream
import tables.features.rolling, tables.state
from streams.events import CleanVitals
from tables.state import DictStateStore, FeatureEngine, FeatureUpdate

events = long_stream(days=2.5, seed=11, patients=3, ooo=0.05)
rng = random.Random(5)
for i, ev in enumerate(list(events)):
    if not isinstance(ev, CleanVitals):
        continue
    if ev.temperature is not None and rng.random() < 0.05:  # converted from F: no short decimal form
        events[i] = ev = dataclasses.replace(ev, temperature=(ev.temperature * 9 / 5 + 32 - 32) * 5 / 9 + 1 / 3)
    if rng.random() < 0.01:  # a redelivered record
        events.append(ev)
    if rng.random() < 0.01:  # a record more than the allowed lateness (1 h) behind
        events.append(dataclasses.replace(ev, event_id=ev.event_id + "-late", ts_ms=ev.ts_ms - 3 * 3600_000))
engine = FeatureEngine(DictStateStore())
vectors, outcomes = [], []
for i, ev in enumerate(events):
    if i % 500 == 499:  # state rebuilt from the (JSON) store now and then
        engine.drop_cache()
    out = engine.process(ev)
    if isinstance(out, FeatureUpdate):
        vectors.append(np.asarray(out.values, dtype=np.float64))
        outcomes.append("update")
    else:
        outcomes.append(getattr(out, "reason", repr(out)))
np.save(sys.argv[1], np.stack(vectors))
with open(sys.argv[1] + ".outcomes", "w") as f:
    f.write("\n".join(outcomes))
print(tables.features.rolling.__file__, tables.state.__file__, engine.rebuilds)
"""

def _run_engine(source_root: Path, out: Path) -> tuple[np.ndarray, list[str], str]:
    """(vectors, outcome per event, the script's output: the modules' files and the store rebuilds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", _ENGINE_RUN, str(out)], cwd=source_root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out), Path(str(out) + ".outcomes").read_text().splitlines(), done.stdout


def test_the_hot_modules_run_compiled() -> None:
    # VITALSTREAM_PURE_PYTHON=1 at install time builds nothing (setup.py): then the sources run as they are.
    expected = "pure python" if pure_python_requested() else "compiled"
    assert build_statuses() == {module: expected for module in COMPILED_MODULES}


def test_an_edited_source_shows_its_build_as_stale(tmp_path: Path) -> None:
    package = tmp_path / "stalepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    build = package / f"mod{_SUFFIX}"
    build.write_bytes(b"")  # never imported: only found
    (package / "mod.py").write_text("X = 1\n")
    os.utime(build, (1_000_000, 1_000_000))  # the build is older than the source
    sys.path.insert(0, str(tmp_path))
    try:
        assert build_status("stalepkg.mod", checkout=True) == "stale"
        assert build_status("stalepkg.mod", checkout=False) == "compiled"  # an installed wheel's file times mean nothing
        os.utime(build, None)
        os.utime(package / "mod.py", (1_000_000, 1_000_000))
        assert build_status("stalepkg.mod", checkout=True) == "compiled"
        build.unlink()
        assert build_status("stalepkg.mod", checkout=True) == "pure python"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("stalepkg", None)


def test_a_build_of_a_module_not_in_the_list_is_stray(tmp_path: Path) -> None:
    (tmp_path / "tables" / "features").mkdir(parents=True)
    (tmp_path / "tables" / "features" / f"rolling{_SUFFIX}").write_bytes(b"")  # listed
    (tmp_path / "tables" / f"state{_SUFFIX}").write_bytes(b"")  # not listed: stray
    (tmp_path / "tables" / f"abc__mypyc{_SUFFIX}").write_bytes(b"")  # mypyc's runtime library
    assert "tables.features.rolling" in COMPILED_MODULES and "tables.state" not in COMPILED_MODULES
    assert stray_builds(tmp_path) == [tmp_path / "tables" / f"state{_SUFFIX}"]
    assert stray_builds() == []  # this checkout


def test_compiled_engine_equals_its_python_source(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path / "sources")
    compiled, compiled_outcomes, compiled_out = _run_engine(ROOT, tmp_path / "compiled.npy")
    pure, pure_outcomes, pure_out = _run_engine(sources, tmp_path / "pure.npy")
    assert ".so" in compiled_out or pure_python_requested(), compiled_out
    assert ".so" not in pure_out and str(sources) in pure_out, pure_out
    assert compiled_outcomes == pure_outcomes
    reasons = Counter(compiled_outcomes)
    assert reasons["update"] > 10_000 and reasons["duplicate"] > 20 and reasons["late_event"] > 50, reasons
    assert int(compiled_out.split()[-1]) > 50  # patients rebuilt from the store
    assert compiled.shape == pure.shape
    # Bit for bit, NaNs in the same places.
    assert np.array_equal(compiled.view(np.uint64), pure.view(np.uint64))
