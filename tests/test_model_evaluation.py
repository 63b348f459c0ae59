"""model.evaluation / model.baselines / model.plots against hand-computed cases and synthetic data."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from model.baselines import LogisticBaseline, news2_scores
from model.evaluation import (
    classification_metrics,
    detected_event_fraction,
    expected_calibration_error,
    lead_time_summary,
    median_lead_time_hours,
    risk_levels,
    risk_thresholds,
    sensitivity_at_alert_rates,
)
from model.plots import permutation_importance, save_plots
from tables.features.registry import FEATURE_INDEX, FEATURE_NAMES, N_FEATURES

H = 3_600_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Signal in heart_rate_latest and resp_rate_latest (with NaNs); a constant and all-NaN columns elsewhere."""
    rng = np.random.default_rng(seed)
    X = np.full((n, N_FEATURES), np.nan)
    X[:, :20] = rng.normal(size=(n, 20))
    hr, rr = rng.normal(size=n), rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-1.5 + 2.0 * hr + 1.5 * rr)))).astype(np.int8)
    hr[rng.random(n) < 0.1] = np.nan
    X[:, FEATURE_INDEX["heart_rate_latest"]] = hr
    X[:, FEATURE_INDEX["resp_rate_latest"]] = rr
    X[:, FEATURE_INDEX["age"]] = 60.0
    return X, y


# -- metrics ----------------------------------------------------------------------------------------


def test_expected_calibration_error_hand_computed():
    # One row per bin: |0-.1|, |1-.9|, |1-.8|, |0-.3| -> mean 0.175.
    assert expected_calibration_error([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]) == pytest.approx(0.175)
    # Shared bin [0.6, 0.7): accuracy 0.5, confidence 0.625.
    assert expected_calibration_error([1, 0], [0.6, 0.65]) == pytest.approx(0.125)
    # p = 1 belongs to the last bin; with 2 bins: bin0 {0.2: y0} -> .2, bin1 {0.5, 1.0: y 1, 1} -> |2 - 1.5|.
    assert expected_calibration_error([0, 1, 1], [0.2, 0.5, 1.0], bins=2) == pytest.approx((0.2 + 0.5) / 3)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_classification_metrics_small_case():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    m = classification_metrics(y, p)
    assert set(m) == {"auroc", "auprc", "brier", "ece"}
    assert m["auroc"] == pytest.approx(8 / 9)  # one discordant pair (0.4 vs 0.35) of 9
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["ece"] == pytest.approx(expected_calibration_error(y, p))
    single = classification_metrics([0, 0], [0.1, 0.2])
    assert math.isnan(single["auroc"]) and single["brier"] == pytest.approx(0.025)


def test_sensitivity_at_alert_rates_hand_computed():
    p = np.arange(10, 0, -1) / 10.0  # 1.0, 0.9, ..., 0.1
    y = np.zeros(10)
    y[[0, 3, 7]] = 1  # positives ranked 1st, 4th and 8th
    s = sensitivity_at_alert_rates(y, p, rates=(0.1, 0.2, 0.4, 0.5, 0.8, 0.35, 0.75))
    assert s == pytest.approx({0.1: 1 / 3, 0.2: 1 / 3, 0.4: 2 / 3, 0.5: 2 / 3, 0.8: 1.0, 0.35: 2 / 3, 0.75: 1.0})
    # Ties at the threshold are all alerted: top 10 % of 10 rows is 1 row, but two share p = 0.9.
    tied = sensitivity_at_alert_rates([0, 1, 0, 0], [0.9, 0.9, 0.1, 0.2], rates=(0.25,))
    assert tied[0.25] == 1.0
    assert math.isnan(sensitivity_at_alert_rates([0, 0], [0.3, 0.4], rates=(0.5,))[0.5])


def test_risk_thresholds_and_levels():
    p = np.arange(1, 101) / 100.0
    t = risk_thresholds(p)
    assert t == pytest.approx({"HIGH": 0.96, "MEDIUM": 0.81})
    assert np.mean(p >= t["HIGH"]) == pytest.approx(0.05) and np.mean(p >= t["MEDIUM"]) == pytest.approx(0.20)
    assert risk_thresholds(p, {"HIGH": 0.1, "MEDIUM": 0.5}) == pytest.approx({"HIGH": 0.91, "MEDIUM": 0.51})
    # A fractional row count rounds up: 15 % of 10 rows alerts 2 rows, so at least the rate is alerted.
    assert risk_thresholds(np.arange(1, 11) / 10, {"HIGH": 0.15, "MEDIUM": 0.2}) == pytest.approx(
        {"HIGH": 0.9, "MEDIUM": 0.9})
    levels = risk_levels(np.array([0.5, 0.81, 0.9, 0.96, 0.99, np.nan]), t)
    assert levels.tolist() == ["LOW", "MEDIUM", "MEDIUM", "HIGH", "HIGH", "LOW"]
    with pytest.raises(ValueError):
        risk_thresholds(p, {"HIGH": 0.0, "MEDIUM": 0.2})


def test_lead_time_hand_computed():
    rows = [
        # patient, ts (h), onset (h or -1), p
        ("A", 30, 48, 0.2), ("A", 36, 48, 0.7), ("A", 40, 48, 0.9),  # detected at 36 h: lead 12 h
        ("A", 50, -1, 0.99),  # negative row: ignored
        ("A", 190, 200, 0.95),  # second event of A: lead 10 h
        ("B", 80, 100, 0.6), ("B", 90, 100, 0.1),  # lead 20 h
        ("C", 5, 10, 0.3), ("C", 8, 10, 0.4),  # never reaches the threshold: missed
        ("D", 1, 30, 0.9),  # 29 h before the onset: outside the 24 h window, so D is missed too
        ("D", 20, 30, 0.1),
    ]
    pid = np.array([r[0] for r in rows], dtype=object)
    ts = np.array([r[1] * H for r in rows], dtype=np.int64)
    onset = np.array([r[2] * H if r[2] >= 0 else -1 for r in rows], dtype=np.int64)
    p = np.array([r[3] for r in rows])
    s = lead_time_summary(pid, ts, onset, p, threshold=0.5)
    assert s["n_events"] == 5 and s["n_detected"] == 3 and s["detected_fraction"] == pytest.approx(0.6)
    assert sorted(s["lead_hours"].tolist()) == [10.0, 12.0, 20.0]
    assert median_lead_time_hours(pid, ts, onset, p, 0.5) == 12.0
    assert detected_event_fraction(pid, ts, onset, p, 0.5) == pytest.approx(0.6)
    # datetime64 timestamps give the same answer.
    assert median_lead_time_hours(pid, ts.astype("datetime64[ms]").astype("datetime64[us]"), onset, p, 0.5) == 12.0
    assert math.isnan(median_lead_time_hours(pid, ts, onset, p, threshold=1.0))


# -- baselines --------------------------------------------------------------------------------------


def test_news2_baseline_uses_news2_total():
    X = np.full((3, N_FEATURES), np.nan)
    X[:, FEATURE_INDEX["news2_total"]] = [5.0, np.nan, 2.0]
    X[:, FEATURE_INDEX["news2_red_flag"]] = [9.0, 9.0, 9.0]
    X[:, FEATURE_INDEX["news2_n_params"]] = [7.0, 0.0, 3.0]
    assert news2_scores(X).tolist() == [5.0, 0.0, 2.0]
    with pytest.raises(ValueError):
        news2_scores(np.zeros((3, 5)))


def test_logistic_baseline_learns_with_missing_and_constant_columns():
    X, y = synthetic(3000, seed=0)
    Xv, yv = synthetic(1000, seed=1)
    X[0, 30] = np.inf  # an infinite value is treated as missing
    base = LogisticBaseline().fit(X, y)
    p = base.predict_proba(Xv)
    assert p.shape == (1000,) and np.all((p >= 0) & (p <= 1)) and np.all(np.isfinite(p))
    assert roc_auc_score(yv, p) > 0.8
    steps = base.pipeline.named_steps
    assert steps["impute"].add_indicator and steps["logreg"].class_weight == "balanced"
    with pytest.raises(ValueError, match="both"):
        LogisticBaseline().fit(X, np.zeros(len(X)))


# -- plots ------------------------------------------------------------------------------------------


def test_permutation_importance_ranks_the_signal_first():
    X, y = synthetic(4000, seed=2)
    hr, rr = FEATURE_INDEX["heart_rate_latest"], FEATURE_INDEX["resp_rate_latest"]

    def predict(A):
        return 2.0 * np.nan_to_num(A[:, hr]) + 1.5 * A[:, rr]

    imp = permutation_importance(predict, X, y, list(FEATURE_NAMES), n_repeats=2, max_rows=1500, seed=0)
    assert len(imp) == N_FEATURES
    assert [imp[0][0], imp[1][0]] == ["heart_rate_latest", "resp_rate_latest"]
    assert imp[0][1] > 0.1 and imp[1][1] > 0.05
    assert [m for _, m, _ in imp] == sorted((m for _, m, _ in imp), reverse=True)
    d = {name: (m, s) for name, m, s in imp}
    assert d["age"] == (0.0, 0.0) and d["lab_alt_latest"] == (0.0, 0.0)  # constant / all-NaN
    assert abs(d[FEATURE_NAMES[0]][0]) < 0.02  # unused noise column
    again = permutation_importance(predict, X, y, list(FEATURE_NAMES), n_repeats=2, max_rows=1500, seed=0)
    assert again == imp


def test_save_plots_writes_non_empty_pngs(tmp_path):
    X, y = synthetic(800, seed=3)
    p = 1 / (1 + np.exp(-(2.0 * np.nan_to_num(X[:, FEATURE_INDEX["heart_rate_latest"]]) - 1.5)))
    imp = [(f"f{i}", 0.1 / (i + 1), 0.01) for i in range(30)]
    baselines = {"NEWS2": news2_scores(X), "logistic": np.nan_to_num(X[:, FEATURE_INDEX["resp_rate_latest"]])}
    paths = save_plots(tmp_path / "plots", y, p, threshold=0.5, importance=imp, baseline_scores=baselines)
    names = ["roc.png", "pr.png", "calibration.png", "confusion_matrix.png", "feature_importance.png"]
    assert [q.name for q in paths] == names
    for q in paths:
        data = q.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, q
    with pytest.raises(ValueError):
        save_plots(tmp_path / "bad", np.zeros(10), np.zeros(10), 0.5, imp)
