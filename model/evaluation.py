"""Metrics, calibration error, alert-rate operating points, risk levels and lead time.

Conventions:

* An alert rate ``r`` over ``n`` rows alerts ``k = ceil(r * n)`` rows: the threshold is the k-th
  largest probability and every row with ``p >= threshold`` is alerted (ties at the threshold are
  all alerted, exactly like a serving-time rule ``p >= threshold``).
* Risk levels: ``HIGH`` if ``p >= thresholds["HIGH"]``, else ``MEDIUM`` if ``p >= thresholds["MEDIUM"]``,
  else ``LOW``.
* Lead time: see ``lead_time_summary``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from streams.timestamps import HOUR_MS

HORIZON_MS = 24 * HOUR_MS
DEFAULT_ALERT_RATES: dict[str, float] = {"HIGH": 0.05, "MEDIUM": 0.20}
LEVELS = ("LOW", "MEDIUM", "HIGH")


def _yp(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y and p differ in length: {len(y)} vs {len(p)}")
    return y, p


def classification_metrics(y, p) -> dict[str, float]:
    """``{"auroc", "auprc", "brier", "ece"}``; AUROC/AUPRC are NaN when ``y`` holds a single class."""
    y, p = _yp(y, p)
    if len(y) == 0:
        return {"auroc": math.nan, "auprc": math.nan, "brier": math.nan, "ece": math.nan}
    both = 0 < y.sum() < len(y)
    return {
        "auroc": float(roc_auc_score(y, p)) if both else math.nan,
        "auprc": float(average_precision_score(y, p)) if both else math.nan,
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
    }


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """Equal-width ECE on [0, 1]: ``sum_b n_b / n * |mean(y_b) - mean(p_b)|``; ``p == 1`` falls in the last bin."""
    y, p = _yp(y, p)
    if len(y) == 0:
        return math.nan
    if bins < 1:
        raise ValueError("bins must be >= 1")
    idx = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    acc = np.bincount(idx, weights=y, minlength=bins)
    conf = np.bincount(idx, weights=p, minlength=bins)
    return float(np.sum(np.abs(acc - conf)) / len(y))  # n_b/n * |acc/n_b - conf/n_b| = |acc - conf|/n


def _k(rate: float, n: int) -> int:
    if not 0 < rate <= 1:
        raise ValueError(f"alert rate must be in (0, 1], got {rate}")
    return min(n, max(1, math.ceil(rate * n - 1e-9)))


def alert_threshold(p, rate: float) -> float:
    """Probability threshold alerting the top ``rate`` fraction: the ``ceil(rate * n)``-th largest ``p``."""
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(p) == 0:
        raise ValueError("cannot set an alert threshold on no predictions")
    k = _k(rate, len(p))
    return float(np.partition(p, len(p) - k)[len(p) - k])


def sensitivity_at_alert_rates(y, p, rates: Sequence[float] = (0.05, 0.10, 0.20)) -> dict[float, float]:
    """``{rate: sensitivity}`` when rows with ``p >=`` the rate's threshold are alerted (NaN without positives)."""
    y, p = _yp(y, p)
    n_pos = float(np.sum(y == 1))
    out: dict[float, float] = {}
    for r in rates:
        if n_pos == 0 or len(p) == 0:
            out[r] = math.nan
            continue
        t = alert_threshold(p, r)
        out[r] = float(np.sum((p >= t) & (y == 1)) / n_pos)
    return out


def risk_thresholds(p_val, alert_rates: Mapping[str, float] | None = None) -> dict[str, float]:
    """Thresholds such that (about, ties aside) each level's fraction of validation rows is at or above it.

    Default ``{"HIGH": 0.05, "MEDIUM": 0.20}``. Returns ``{level: threshold}`` with the same keys.
    """
    rates = dict(DEFAULT_ALERT_RATES if alert_rates is None else alert_rates)
    return {level: alert_threshold(p_val, r) for level, r in rates.items()}


def risk_levels(p, thresholds: Mapping[str, float]) -> np.ndarray:
    """Array of ``"LOW"``/``"MEDIUM"``/``"HIGH"`` (a NaN probability is ``"LOW"``)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, "LOW", dtype="<U6")
    out[p >= thresholds["MEDIUM"]] = "MEDIUM"
    out[p >= thresholds["HIGH"]] = "HIGH"
    return out


def _as_ms(a) -> np.ndarray:
    """int64 epoch ms from ints or ``datetime64`` of any unit."""
    a = np.asarray(a)
    if a.dtype.kind == "M":
        return a.astype("datetime64[ms]").astype(np.int64)
    return a.astype(np.int64)


def lead_time_summary(patient_ids, ts_ms, onset_ms, p, threshold: float) -> dict[str, float | int | np.ndarray]:
    """Early-warning lead time per adverse event.

    An event is a distinct ``(patient_id, onset_ms)`` with ``onset_ms >= 0``; its rows are the rows
    carrying that onset (the positive rows, i.e. the 24 h before the onset; rows outside
    ``[onset - 24 h, onset)`` are ignored defensively). The event is detected if one of them has
    ``p >= threshold``; its lead time is ``(onset - ts of the earliest such row) / 1 h``.

    ``ts_ms``/``onset_ms`` are epoch ms (or ``datetime64``). Returns ``{"median_lead_hours",
    "detected_fraction", "n_events", "n_detected", "lead_hours"}``: ``lead_hours`` has one float per
    detected event; the median is NaN when nothing is detected, the fraction NaN without events.
    """
    pid = np.asarray(patient_ids)
    ts = _as_ms(ts_ms)
    onset = _as_ms(onset_ms)
    p = np.asarray(p, dtype=np.float64)
    if not (len(pid) == len(ts) == len(onset) == len(p)):
        raise ValueError("patient_ids, ts_ms, onset_ms and p must have equal lengths")
    m = (onset >= 0) & (ts < onset) & (ts >= onset - HORIZON_MS)
    df = pd.DataFrame({"pid": pid[m], "onset": onset[m], "ts": ts[m], "hit": p[m] >= threshold})
    n_events = int(df.groupby(["pid", "onset"], sort=False).ngroups) if len(df) else 0
    hits = df[df["hit"]]
    first = hits.groupby(["pid", "onset"], sort=True)["ts"].min() if len(hits) else pd.Series(dtype=np.int64)
    lead = ((first.index.get_level_values("onset").to_numpy(np.int64) - first.to_numpy(np.int64)) / HOUR_MS
            if len(first) else np.empty(0))
    return {
        "median_lead_hours": float(np.median(lead)) if len(lead) else math.nan,
        "detected_fraction": len(lead) / n_events if n_events else math.nan,
        "n_events": n_events,
        "n_detected": len(lead),
        "lead_hours": np.asarray(lead, dtype=np.float64),
    }


def median_lead_time_hours(patient_ids, ts_ms, onset_ms, p, threshold: float) -> float:
    """Median lead time in hours over detected events (NaN if none); see ``lead_time_summary``."""
    return float(lead_time_summary(patient_ids, ts_ms, onset_ms, p, threshold)["median_lead_hours"])


def detected_event_fraction(patient_ids, ts_ms, onset_ms, p, threshold: float) -> float:
    """Fraction of events with at least one alert in their 24 h before onset (NaN without events)."""
    return float(lead_time_summary(patient_ids, ts_ms, onset_ms, p, threshold)["detected_fraction"])
