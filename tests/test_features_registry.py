"""The feature registry: names, layout and a stable version."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from streams.vocab import LAB_TESTS, VITAL_SIGNALS
from tables.features import registry as reg

ROOT = Path(__file__).resolve().parents[1]


def test_at_least_120_unique_names_and_consistent_index() -> None:
    assert reg.N_FEATURES == len(reg.FEATURES) == len(reg.FEATURE_NAMES) >= 120
    assert len(set(reg.FEATURE_NAMES)) == reg.N_FEATURES
    assert all(reg.FEATURE_INDEX[n] == i for i, n in enumerate(reg.FEATURE_NAMES))


def test_rolling_block_and_groups() -> None:
    rolling = [f.name for f in reg.FEATURES if f.group == "rolling"]
    assert len(rolling) == len(VITAL_SIGNALS) * 3 * 6 == 108
    assert "heart_rate_trend_24h" in rolling and "spo2_count_1h" in rolling
    for s in VITAL_SIGNALS:  # the engine writes each (signal, window) as one slice
        for w, _ in reg.WINDOWS:
            b = reg.rolling_base(s, w)
            assert reg.FEATURE_NAMES[b : b + 6] == tuple(f"{s}_{st}_{w}" for st in reg.ROLLING_STATS)
    assert set(reg.FEATURE_GROUPS) == {
        "rolling", "latest", "derived", "news2", "labs", "medications", "context", "missingness",
    }  # fmt: skip
    for t in LAB_TESTS:
        assert f"lab_{reg.slug(t)}_latest" in reg.FEATURE_INDEX and f"lab_{reg.slug(t)}_change_24h" in reg.FEATURE_INDEX
    assert "drug_interaction_flag" in reg.FEATURE_INDEX and "med_vs_101_doses_24h" in reg.FEATURE_INDEX


def test_specs_are_complete() -> None:
    for f in reg.FEATURES:
        assert f.name.isidentifier() and f.name == f.name.lower(), f.name
        assert f.dtype in {"float64", "int", "bool", "code"}, f
        assert f.unit and f.description and f.group


def test_version_is_stable_across_imports() -> None:
    code = "from tables.features.registry import FEATURE_VERSION; print(FEATURE_VERSION)"
    outs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    }
    assert outs == {reg.FEATURE_VERSION}
    assert len(reg.FEATURE_VERSION) == 12 and int(reg.FEATURE_VERSION, 16) >= 0


def test_features_as_dict_maps_nan_to_none() -> None:
    v = np.arange(reg.N_FEATURES, dtype=np.float64)
    v[3] = math.nan
    d = reg.features_as_dict(v)
    assert list(d) == list(reg.FEATURE_NAMES)
    assert d[reg.FEATURE_NAMES[3]] is None and d[reg.FEATURE_NAMES[4]] == 4.0
