"""The mypyc builds of the hot modules (setup.py, vitalstream/compiled.py): in use, and equal to their sources.

A compiled module must compute exactly what its .py source computes; the source stays the one definition.
The parity test runs the feature engine on the same events twice, in subprocesses: on the installed builds,
and on a copy of the sources with no builds; the vectors must be identical to the bit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from vitalstream.compiled import COMPILED_MODULES, build_status, build_statuses, copy_sources, stray_builds

ROOT = Path(__file__).resolve().parents[1]

_ENGINE_RUN = r"""
import dataclasses, random, sys
import numpy as np
from test_features_engine import long_stream
import tables.features.rolling, tables.state
from streams.events import CleanVitals
from tables.state import DictStateStore, FeatureEngine, FeatureUpdate

events = long_stream(days=2.5, seed=11, patients=3, ooo=0.05)
rng = random.Random(5)
for i, ev in enumerate(events):  # some temperatures converted from F: no short decimal form (binary scale)
    if isinstance(ev, CleanVitals) and ev.temperature is not None and rng.random() < 0.05:
        events[i] = dataclasses.replace(ev, temperature=(ev.temperature * 9 / 5 + 32 - 32) * 5 / 9 + 1 / 3)
engine = FeatureEngine(DictStateStore())
vectors, outcomes = [], []
for ev in events:
    out = engine.process(ev)
    if isinstance(out, FeatureUpdate):
        vectors.append(np.asarray(out.values, dtype=np.float64))
        outcomes.append("update")
    else:
        outcomes.append(repr(out))
np.save(sys.argv[1], np.stack(vectors))
with open(sys.argv[1] + ".outcomes", "w") as f:
    f.write("\n".join(outcomes))
print(tables.features.rolling.__file__, tables.state.__file__)
"""


def _run_engine(source_root: Path, out: Path) -> tuple[np.ndarray, list[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, "-c", _ENGINE_RUN, str(out)], cwd=source_root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out), Path(str(out) + ".outcomes").read_text().splitlines(), done.stdout


def test_the_hot_modules_run_compiled() -> None:
    # VITALSTREAM_PURE_PYTHON=1 at install time builds nothing (setup.py): then the sources run as they are.
    expected = "pure python" if os.environ.get("VITALSTREAM_PURE_PYTHON") in ("1", "true", "yes") else "compiled"
    assert build_statuses() == {module: expected for module in COMPILED_MODULES}


def test_an_edited_source_shows_its_build_as_stale(tmp_path: Path) -> None:
    package = tmp_path / "stalepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    suffix = next(s for s in __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES if s.endswith(".so"))
    build = package / f"mod{suffix}"
    build.write_bytes(b"")  # never imported: only found
    (package / "mod.py").write_text("X = 1\n")
    os.utime(build, (1_000_000, 1_000_000))  # the build is older than the source
    sys.path.insert(0, str(tmp_path))
    try:
        assert build_status("stalepkg.mod") == "stale"
        os.utime(build, None)
        os.utime(package / "mod.py", (1_000_000, 1_000_000))
        assert build_status("stalepkg.mod") == "compiled"
        build.unlink()
        assert build_status("stalepkg.mod") == "pure python"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("stalepkg", None)


def test_a_build_of_a_module_not_in_the_list_is_stray(tmp_path: Path) -> None:
    suffix = next(s for s in __import__("importlib.machinery").machinery.EXTENSION_SUFFIXES if s.endswith(".so"))
    (tmp_path / "tables" / "features").mkdir(parents=True)
    (tmp_path / "tables" / "features" / f"rolling{suffix}").write_bytes(b"")  # listed
    (tmp_path / "tables" / f"state{suffix}").write_bytes(b"")  # not listed: stray
    (tmp_path / "tables" / f"abc__mypyc{suffix}").write_bytes(b"")  # mypyc's runtime library
    assert "tables.features.rolling" in COMPILED_MODULES and "tables.state" not in COMPILED_MODULES
    assert stray_builds(tmp_path) == [tmp_path / "tables" / f"state{suffix}"]
    assert stray_builds() == []  # this checkout


def test_compiled_engine_equals_its_python_source(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path / "sources")
    compiled, compiled_outcomes, compiled_files = _run_engine(ROOT, tmp_path / "compiled.npy")
    pure, pure_outcomes, pure_files = _run_engine(sources, tmp_path / "pure.npy")
    assert ".so" in compiled_files or os.environ.get("VITALSTREAM_PURE_PYTHON"), compiled_files
    assert ".so" not in pure_files and str(sources) in pure_files, pure_files
    assert compiled_outcomes == pure_outcomes
    assert compiled_outcomes.count("update") > 10_000
    assert any(o != "update" for o in compiled_outcomes)  # the late and duplicate paths ran too
    assert compiled.shape == pure.shape
    # Bit for bit, NaNs in the same places.
    assert np.array_equal(compiled.view(np.uint64), pure.view(np.uint64))
