"""`vitalstream train`: dataset -> PyTorch model -> evaluation against baselines -> MLflow -> promotion gate.

1. `model.dataset.build_dataset`: offline rows for a date range, point-in-time labels, 70/15/15 split.
2. `model.training.fit`: the MLP (imputation, missing indicators and scaling inside the module),
   streamed from Parquet, early-stopped on validation AUROC, Platt-calibrated on validation.
3. Test-split evaluation: AUROC, AUPRC, Brier, ECE, sensitivity at alert rates, median lead
   time at the HIGH threshold; NEWS2 and logistic regression on the same rows.
4. `model.tracking`: one MLflow run (params, metrics, tags, model, scaler.pkl, plots); the
   version is registered under `adverse_event_24h` with alias `staging`; `production` moves
   only if the candidate passes the gate against the current production model.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
from sklearn.metrics import roc_auc_score

from model import evaluation
from model.baselines import LogisticBaseline, news2_scores
from model.dataset import DatasetInfo, build_dataset
from model.loader import ParquetSplit
from model.training import TrainConfig, fit
from sinks.lake import Lake
from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION
from vitalstream.settings import Settings

log = logging.getLogger(__name__)

ALERT_RATES = {"HIGH": 0.05, "MEDIUM": 0.20}  # share of validation rows at or above each risk level
SENSITIVITY_RATES = (0.05, 0.10, 0.20)
LOGREG_MAX_ROWS = 200_000


@dataclass
class TrainReport:
    dataset: DatasetInfo
    metrics: dict[str, float]
    thresholds: dict[str, float]
    run_id: str | None = None
    version: str | None = None
    promoted: bool | None = None
    promotion_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def headline(self) -> dict:
        m = self.metrics
        return {
            "data_version": self.dataset.data_version, "rows": self.dataset.rows,
            "test_auroc": round(m["test_auroc"], 4), "news2_test_auroc": round(m["news2_test_auroc"], 4),
            "margin_over_news2": round(m["test_auroc"] - m["news2_test_auroc"], 4),
            "logreg_test_auroc": round(m["logreg_test_auroc"], 4), "test_auprc": round(m["test_auprc"], 4),
            "test_brier": round(m["test_brier"], 4), "test_ece": round(m["test_ece"], 4),
            "median_lead_time_h": None if np.isnan(m["test_median_lead_time_h"]) else round(m["test_median_lead_time_h"], 1),
            "model_version": self.version, "promoted": self.promoted, "reasons": self.promotion_reasons,
        }


def _synthetic_example(preprocessor) -> np.ndarray:
    """An input example that is no patient's data: the training medians, then the same with gaps."""
    example = np.tile(np.asarray(preprocessor.medians, dtype=np.float32), (2, 1))
    example[1, ::3] = np.nan
    return example


def _split(lake: Lake, info: DatasetInfo, name: str) -> ParquetSplit:
    return ParquetSplit([lake.full(p) for p in info.files[name]], filesystem=lake.fs)


def evaluate(model_proba: Callable[[np.ndarray], np.ndarray], X: np.ndarray, y: np.ndarray, extras: dict,
             p_val: np.ndarray, y_val: np.ndarray) -> tuple[dict[str, float], dict[str, float], np.ndarray]:
    """Test metrics of a model's probabilities, with risk thresholds set on validation."""
    p = model_proba(X)
    metrics = {f"test_{k}": float(v) for k, v in evaluation.classification_metrics(y, p).items()}
    for rate, sens in evaluation.sensitivity_at_alert_rates(y, p, SENSITIVITY_RATES).items():
        metrics[f"test_sensitivity_at_{int(round(rate * 100))}pct_alerts"] = float(sens)
    thresholds = evaluation.risk_thresholds(p_val, ALERT_RATES)
    ts_ms = extras["timestamp"].astype("datetime64[ms]").astype(np.int64)
    lead = evaluation.lead_time_summary(extras["patient_id"], ts_ms, extras["onset_ms"], p, thresholds["HIGH"])
    metrics["test_median_lead_time_h"] = float(lead["median_lead_hours"])
    metrics["test_events_detected_fraction"] = float(lead["detected_fraction"])
    metrics["val_auroc_calibrated"] = float(evaluation.classification_metrics(y_val, p_val)["auroc"])
    return metrics, thresholds, p


def train(settings: Settings, *, start: str | None = None, end: str | None = None, split: str = "time",
          config: TrainConfig | None = None, min_grade: int = 1, register: bool = True,
          experiment: str = "adverse_event_24h", model_name: str | None = None,
          min_improvement: float | None = None, progress: bool = True,
          log_fn: Callable[[str], None] = log.info) -> TrainReport:
    import time

    from model import tracking
    from model.plots import permutation_importance, save_plots

    t0 = time.perf_counter()
    config = config or TrainConfig()
    model_name = model_name or settings.model_name
    min_improvement = settings.promotion_min_improvement if min_improvement is None else min_improvement
    if not min_improvement >= 0:  # checked before any work: a gate never admits a regression
        raise ValueError(f"the promotion gate must be >= 0, got {min_improvement}")
    lake = Lake.from_settings(settings)
    if register:
        tracking.configure_tracking(settings)  # fail before the long work if MLflow is unreachable
    info = build_dataset(settings, start=start, end=end, split=split, min_grade=min_grade, lake=lake, log_fn=log_fn)
    log_fn(f"dataset {info.data_version}: rows {info.rows}, positives {info.positives}, "
           f"patients in several splits: {info.patients_in_several_splits}"
           + (f" (e.g. {', '.join(info.several_splits_sample[:5])})" if info.several_splits_sample else ""))
    train_split, val_split, test_split = (_split(lake, info, s) for s in ("train", "val", "test"))
    result = fit(train_split, val_split, config, progress=progress)
    model = result.model
    X_val, y_val, _ = val_split.to_numpy()
    X_test, y_test, extras = test_split.to_numpy(["patient_id", "timestamp", "onset_ms"])
    p_val = model.predict_proba(X_val)
    metrics, thresholds, p_test = evaluate(model.predict_proba, X_test, y_test, extras, p_val, y_val)
    metrics["val_auroc"] = float(result.val_auroc)
    news2 = news2_scores(X_test)
    metrics["news2_test_auroc"] = float(roc_auc_score(y_test, news2))  # a score, not a probability
    X_lr, y_lr = train_split.sample(LOGREG_MAX_ROWS, seed=config.seed)
    logreg = LogisticBaseline(seed=config.seed).fit(X_lr, y_lr)
    p_lr = logreg.predict_proba(X_test)
    metrics["logreg_test_auroc"] = float(roc_auc_score(y_test, p_lr))
    metrics["auroc_margin_over_news2"] = metrics["test_auroc"] - metrics["news2_test_auroc"]
    metrics["train_seconds"] = float(result.seconds)
    report = TrainReport(info, metrics, thresholds)
    log_fn(f"test AUROC {metrics['test_auroc']:.3f} (NEWS2 {metrics['news2_test_auroc']:.3f}, "
           f"logistic regression {metrics['logreg_test_auroc']:.3f})")
    if not register:
        report.seconds = time.perf_counter() - t0
        return report

    with tempfile.TemporaryDirectory(prefix="vitalstream-train-") as tmp:
        out = Path(tmp)
        importance = permutation_importance(model.predict_proba, X_test, y_test, list(FEATURE_NAMES),
                                            seed=config.seed)
        artifacts = save_plots(out, y_test, p_test, thresholds["HIGH"], importance,
                               baseline_scores={"NEWS2": news2, "logistic regression": p_lr})
        artifacts.append(result.preprocessor.save(out / "scaler.pkl"))
        card = out / "model_card.json"
        card.write_bytes(orjson.dumps({
            "risk_levels": {"thresholds": thresholds, "alert_rates_on_validation": ALERT_RATES},
            "dataset": asdict(info), "calibration": {"platt_a": result.calibration[0], "platt_b": result.calibration[1]},
            "history": result.history, "feature_names": list(FEATURE_NAMES),
        }, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        artifacts.append(card)
        params = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
                  "split": split, "start": info.start, "end": info.end, "min_grade": min_grade,
                  "n_train": result.n_train, "n_val": result.n_val, "n_test": int(len(y_test)),
                  "best_epoch": result.best_epoch, "pos_weight": round(result.pos_weight, 4),
                  "threshold_high": thresholds["HIGH"], "threshold_medium": thresholds["MEDIUM"],
                  "min_improvement": min_improvement}
        tags = {"git_commit": tracking.git_commit(), "data_version": info.data_version,
                "feature_version": FEATURE_VERSION, "split": split}
        run_id, version = tracking.log_candidate(settings, experiment=experiment, model=model,
                                                 input_example=_synthetic_example(result.preprocessor),
                                                 params=params, metrics=metrics,
                                                 tags=tags, artifacts=artifacts, model_name=model_name)
    decision = tracking.decide_promotion(model_name=model_name, candidate_version=version,
                                        candidate_auroc=metrics["test_auroc"],
                                        news2_auroc=metrics["news2_test_auroc"], X_test=X_test, y_test=y_test,
                                        min_improvement=min_improvement)
    tracking.apply_promotion(run_id, model_name, decision)
    report.run_id, report.version = run_id, version
    report.promoted, report.promotion_reasons = decision.promoted, list(decision.reasons)
    report.seconds = time.perf_counter() - t0
    log_fn(("promoted" if decision.promoted else "not promoted") + f" version {version}: " + "; ".join(decision.reasons))
    return report
