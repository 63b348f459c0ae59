"""Compiles the per-event hot modules with mypyc (from the same Python sources; metadata is in pyproject.toml).

Compiled modules are C extensions built next to their .py files and imported instead of them; the .py files
stay the one definition of the code. `VITALSTREAM_PURE_PYTHON=1` at install time skips compiling (the .py
files then run as they are, slower). See docs/pipeline.md, "Compiled modules".
"""
from __future__ import annotations

import os

from setuptools import setup

from vitalstream.compiled import COMPILED_MODULES

ext_modules = []
if os.environ.get("VITALSTREAM_PURE_PYTHON", "") not in ("1", "true", "yes"):
    from mypyc.build import mypycify

    ext_modules = mypycify([m.replace(".", "/") + ".py" for m in COMPILED_MODULES], opt_level="3")

setup(ext_modules=ext_modules)
