"""Compiles the per-event hot modules with mypyc (from the same Python sources; metadata is in pyproject.toml).

Compiled modules are C extensions built next to their .py files and imported instead of them; the .py files
stay the one definition of the code. `VITALSTREAM_PURE_PYTHON=1` at install time skips compiling (the .py
files then run as they are, slower). See docs/pipeline.md, "Compiled modules".
"""
from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup

from vitalstream.compiled import COMPILED_MODULES

ext_modules = []
if os.environ.get("VITALSTREAM_PURE_PYTHON", "") not in ("1", "true", "yes"):
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        sys.exit(f"setup.py: no C compiler ({compiler!r}) to build the compiled modules with mypyc. Install one "
                 "(Debian: apt-get install gcc python3-dev), or install with VITALSTREAM_PURE_PYTHON=1 to run the "
                 "same code as plain Python, slower.")
    from mypyc.build import mypycify

    ext_modules = mypycify([m.replace(".", "/") + ".py" for m in COMPILED_MODULES], opt_level="3")

setup(ext_modules=ext_modules)
