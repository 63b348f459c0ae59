"""Compiles the per-event hot modules with mypyc (from the same Python sources; metadata is in pyproject.toml).

Compiled modules are C extensions built next to their .py files and imported instead of them; the .py files
stay the one definition of the code. `VITALSTREAM_PURE_PYTHON=1` at install time builds nothing (and removes
earlier builds from the checkout): the .py files then run as they are, slower, with the same results. See
docs/features.md, "Compiled modules".
"""
from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # pip runs this file without the project on sys.path

from vitalstream.compiled import COMPILED_MODULES, in_tree_builds, pure_python_requested  # noqa: E402

ext_modules = []
if pure_python_requested():
    for build in in_tree_builds(HERE):  # else they would still be imported instead of the sources
        build.unlink()
else:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        sys.exit(f"setup.py: no C compiler ({compiler!r}) to build the compiled modules with mypyc. Install one "
                 "(Debian: apt-get install gcc python3-dev), or install with VITALSTREAM_PURE_PYTHON=1 to run the "
                 "same code as plain Python, slower.")
    from mypyc.build import mypycify

    ext_modules = mypycify([m.replace(".", "/") + ".py" for m in COMPILED_MODULES], opt_level="3")

setup(ext_modules=ext_modules)
