"""The modules compiled with mypyc (setup.py builds them from their .py sources), and which builds are in use.

A compiled module is a C extension next to its .py file, and Python imports it instead of the .py file, so
an edited .py file does nothing until it is built again (`pip install -e .`, which `./dev` runs). The test
session and the worker check for that (`stale`).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "api", "model", "simulator", "sinks", "streams", "tables", "vitalstream")

# The per-event hot path (docs/pipeline.md, "Compiled modules"): keep these importable as plain Python too.
COMPILED_MODULES: tuple[str, ...] = (
    "tables.features.rolling",
    "tables.features.news2",
    "tables.features.context",
)


def build_status(module: str) -> str:
    """'compiled', 'pure python' (no build found) or 'stale' (the .py file changed after the build)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    origin = Path(spec.origin)
    if not origin.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return "pure python"
    source = origin.parent / (module.rpartition(".")[2] + ".py")
    if source.exists() and source.stat().st_mtime > origin.stat().st_mtime:
        return "stale"
    return "compiled"


def build_statuses() -> dict[str, str]:
    return {module: build_status(module) for module in COMPILED_MODULES}


def stray_builds(root: Path = ROOT) -> list[Path]:
    """Builds under the project's packages of modules no longer in COMPILED_MODULES: imported instead of
    their .py files, they would run old code (delete them, or `git clean -fdX`)."""
    stray = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            suffix = next((s for s in importlib.machinery.EXTENSION_SUFFIXES if path.name.endswith(s)), None)
            if suffix is None or path.name.endswith("__mypyc" + suffix):  # mypyc's shared runtime library
                continue
            module = ".".join(path.relative_to(root).with_name(path.name[: -len(suffix)]).parts)
            if module not in COMPILED_MODULES:
                stray.append(path)
    return stray


def copy_sources(dest: Path, extra: tuple[str, ...] = ()) -> Path:
    """The project's packages (and `extra` folders) copied to dest without any build: run from there (on
    PYTHONPATH, ahead of the install), the same code runs as plain Python. For parity tests and benchmarks."""
    for folder in (*PACKAGES, *extra):
        shutil.copytree(ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    return dest
