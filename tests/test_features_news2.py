"""NEWS2 (RCP 2017, SpO2 scale 1): every band boundary and the aggregate rules."""
from __future__ import annotations

import math

import pytest

from tables.features.news2 import (
    News2,
    news2,
    news2_vector,
    score_air_oxygen,
    score_bp_systolic,
    score_consciousness,
    score_heart_rate,
    score_resp_rate,
    score_spo2,
    score_temperature,
)

CASES = {
    score_temperature: [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2),
                        (34.0, 3), (41.0, 2), (35.05, 1), (36.05, 0), (38.05, 1), (39.05, 2)],
    score_bp_systolic: [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3),
                        (60, 3), (250, 3), (90.5, 2), (219.5, 3)],
    score_heart_rate: [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2), (131, 3),
                       (20, 3), (180, 3), (40.5, 1), (130.5, 3)],
    score_resp_rate: [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3),
                      (4, 3), (40, 3), (8.5, 1), (11.5, 0), (20.5, 2), (24.5, 3)],
    score_spo2: [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0), (85, 3), (91.5, 2), (95.5, 0)],
}  # fmt: skip


@pytest.mark.parametrize(
    "fn,value,expected",
    [(fn, v, e) for fn, cases in CASES.items() for v, e in cases],
    ids=lambda x: getattr(x, "__name__", repr(x)),
)
def test_band_boundaries(fn, value, expected) -> None:
    assert fn(value) == expected


@pytest.mark.parametrize("fn", [*CASES, score_air_oxygen, score_consciousness])
def test_missing_parameter_is_nan(fn) -> None:
    assert math.isnan(fn(None))
    if fn not in (score_air_oxygen, score_consciousness):
        assert math.isnan(fn(math.nan))


def test_oxygen_and_consciousness() -> None:
    assert score_air_oxygen(True) == 2 and score_air_oxygen(False) == 0
    assert score_air_oxygen(1.0) == 2 and score_air_oxygen(0.0) == 0
    assert score_consciousness("A") == 0
    assert [score_consciousness(c) for c in "CVPU"] == [3, 3, 3, 3]


def test_total_red_flag_and_partial_inputs() -> None:
    healthy = news2(16, 97, False, 120, 70, "A", 37.0)
    assert healthy == News2(0, 0, 0, 0, 0, 0, 0, 0, 0, 7)
    sick = news2(26, 91, True, 90, 131, "V", 39.5)
    assert sick.total == 3 + 3 + 2 + 3 + 3 + 3 + 2 and sick.red_flag == 1
    # One parameter at 3 is a red flag even with a low total.
    lone = news2(16, 97, False, 120, 70, "C", 37.0)
    assert (lone.total, lone.red_flag) == (3, 1)
    # Missing parameters are left out of the total and counted.
    partial = news2(22, None, None, None, 95, None, None)
    assert math.isnan(partial.spo2) and (partial.total, partial.n_params, partial.red_flag) == (3, 2, 0)
    empty = news2(None, None, None, None, None, None, None)
    assert math.isnan(empty.total) and math.isnan(empty.red_flag) and empty.n_params == 0


def test_vector_matches_named_tuple() -> None:
    args = (23.0, 94.0, True, 105.0, 115.0, "A", 38.5)
    assert news2_vector(*args) == tuple(news2(*args))
    assert len(news2_vector(*args)) == 10
