"""The worker's bulk histogram observation against prometheus_client's own observe."""
from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from agents.metrics import observe_many

BOUNDS = (0.01, 0.05, 0.1, 0.25, 1.0)


def _samples(histogram: Histogram) -> dict[str, float]:
    return {f"{s.name}{s.labels}": s.value for metric in histogram.collect() for s in metric.samples
            if not s.name.endswith("_created")}


@pytest.mark.parametrize("amounts", [
    [],
    [0.0, 0.01, 0.0100001, 0.05, 0.07, 0.1, 0.25, 0.2500001, 1.0, 3.0, 1e9],  # on and just past each bound
    list(np.random.default_rng(3).exponential(0.2, 5_000)),
    [-0.5, 0.02, np.inf, -np.inf],  # below every bound, past every finite one
    [0.02, np.nan, 0.2],  # NaN: no bucket, a NaN sum (as observe)
])
def test_observe_many_equals_one_observe_per_amount(amounts):
    one, bulk = (Histogram("latency", "h", buckets=BOUNDS, registry=CollectorRegistry()) for _ in range(2))
    for amount in amounts:
        one.observe(amount)
    observe_many(bulk, amounts)
    expected, got = _samples(one), _samples(bulk)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert (math.isnan(got[key]) and math.isnan(value)) or math.isclose(got[key], value, rel_tol=1e-9,
                                                                            abs_tol=1e-12), key


def test_observe_many_refuses_a_labelled_parent_like_observe():
    labelled = Histogram("by_topic", "h", ["topic"], buckets=BOUNDS, registry=CollectorRegistry())
    with pytest.raises(ValueError):
        observe_many(labelled, [0.1])
