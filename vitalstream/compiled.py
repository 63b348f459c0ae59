"""The modules compiled with mypyc (setup.py builds them from their .py sources), and which builds are in use.

A compiled module is a C extension next to its .py file, and Python imports it instead of the .py file, so
in a checkout an edited .py file does nothing until it is built again (`pip install -e .`, which `./dev`
runs). The test session and the worker check for that (`stale`). See docs/features.md, "Compiled modules".
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "api", "model", "simulator", "sinks", "streams", "tables", "vitalstream")
# Set at install time: build nothing, run the sources as plain Python (slower, same results).
PURE_PYTHON_ENV = "VITALSTREAM_PURE_PYTHON"

# The per-event hot path: keep these importable as plain Python too.
COMPILED_MODULES: tuple[str, ...] = (
    "tables.features.rolling",
    "tables.features.news2",
    "tables.features.context",
    "tables.features.latest",
)


def pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "").strip().lower() in ("1", "true", "yes")


def extension_suffix(name: str) -> str | None:
    """The extension-module suffix `name` ends with ('.cpython-311-x86_64-linux-gnu.so', ...), if any."""
    return next((s for s in importlib.machinery.EXTENSION_SUFFIXES if name.endswith(s)), None)


def build_status(module: str, checkout: bool = (ROOT / "setup.py").exists()) -> str:
    """'compiled', 'pure python' (no build found) or 'stale' (in a checkout: the .py file changed after the
    build). An installed wheel is never stale: pip writes its files in any order, with fresh times."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    origin = Path(spec.origin)
    if extension_suffix(origin.name) is None:
        return "pure python"
    source = origin.parent / (module.rpartition(".")[2] + ".py")
    if checkout and source.exists() and source.stat().st_mtime > origin.stat().st_mtime:
        return "stale"
    return "compiled"


def build_statuses() -> dict[str, str]:
    return {module: build_status(module) for module in COMPILED_MODULES}


def in_tree_builds(root: Path = ROOT) -> list[Path]:
    """Every extension module under the project's packages (mypyc's shared runtime library excepted)."""
    builds = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            suffix = extension_suffix(path.name)
            if suffix is not None and not path.name.endswith("__mypyc" + suffix):
                builds.append(path)
    return builds


def stray_builds(root: Path = ROOT) -> list[Path]:
    """Builds of modules no longer in COMPILED_MODULES: imported instead of their .py files, they would run
    old code (delete them, or `git clean -fdX`)."""
    stray = []
    for path in in_tree_builds(root):
        name = path.name[: -len(extension_suffix(path.name) or "")]
        if ".".join(path.relative_to(root).with_name(name).parts) not in COMPILED_MODULES:
            stray.append(path)
    return stray


def copy_sources(dest: Path, extra: tuple[str, ...] = ()) -> Path:
    """The project's packages (and `extra` folders) copied to dest without any build: run from there (on
    PYTHONPATH, ahead of the install), the same code runs as plain Python. For parity tests and benchmarks."""
    for folder in (*PACKAGES, *extra):
        shutil.copytree(ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    return dest
