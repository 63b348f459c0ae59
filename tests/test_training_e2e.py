"""History -> Kafka -> replay -> dataset -> PyTorch model -> MLflow (PostgreSQL) registry, on the real stack."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pytest

from agents.replay import plan_replay, run_replay
from model.dataset import build_dataset
from model.loader import ParquetSplit
from model.tracking import predict_proba
from model.train import train
from model.training import TrainConfig
from sinks.lake import Lake
from simulator.config import SimulationConfig
from simulator.model import iter_records
from tests.harness import produce

pytestmark = pytest.mark.stack

DAYS = 14


@pytest.fixture
def history(env, unique):
    settings, _, _ = env
    settings = settings.model_copy(update={"model_name": f"ae24-{unique}"})
    start = (datetime.now(timezone.utc) - timedelta(days=DAYS + 1)).replace(hour=0, minute=0, second=0,
                                                                           microsecond=0)
    cfg = SimulationConfig(seed=5, n_patients=60, start=start, days=DAYS, fraction_monitored=0.0,
                           fraction_device=0.1, hazard_scale=3.0)
    produce(settings, [(r.topic, r.key, r.value, r.timestamp_ms) for r in iter_records(cfg)])
    first, last = start.date().isoformat(), (start + timedelta(days=DAYS - 1)).date().isoformat()
    report = run_replay(settings, plan_replay(settings, int(start.timestamp() * 1000),
                                              int((start + timedelta(days=DAYS)).timestamp() * 1000)),
                        progress=False)
    assert report.rows > 5000
    return settings, first, last


def test_training_beats_news2_and_registers_a_production_model(history, unique):
    settings, first, last = history
    report = train(settings, start=first, end=last, config=TrainConfig(max_epochs=12, patience=3),
                   experiment=f"test-{unique}", progress=False)
    m = report.metrics
    info = report.dataset
    assert info.rows["train"] > info.rows["val"] > 0 and info.rows["test"] > 0
    assert all(info.positives[s] > 0 for s in ("train", "val", "test")), info.positives
    assert m["test_auroc"] > m["news2_test_auroc"], m
    assert report.promoted is True, report.promotion_reasons

    # MLflow on PostgreSQL: the run's metrics, tags and artifacts; the aliases.
    client = mlflow.MlflowClient()
    run = client.get_run(report.run_id)
    for name in ("test_auroc", "test_auprc", "test_brier", "test_ece", "news2_test_auroc", "logreg_test_auroc",
                 "val_auroc"):
        assert np.isfinite(run.data.metrics[name]), name
    assert run.data.tags["data_version"] == info.data_version
    assert run.data.tags["feature_version"] and run.data.tags["git_commit"]
    names = {a.path for a in client.list_artifacts(report.run_id)}
    names |= {a.path for a in client.list_artifacts(report.run_id, "plots")}
    assert {"plots/roc.png", "plots/pr.png", "plots/calibration.png", "plots/confusion_matrix.png",
            "plots/feature_importance.png", "scaler.pkl", "promotion.json"} <= names, names
    assert client.get_model_version_by_alias(settings.model_name, "production").version == report.version
    assert client.get_model_version_by_alias(settings.model_name, "staging").version == report.version

    # The registered model scores like the trained one, from MLflow alone.
    lake = Lake.from_settings(settings)
    X, y, _ = ParquetSplit([lake.full(p) for p in info.files["test"]], filesystem=lake.fs).to_numpy()
    loaded = mlflow.pytorch.load_model(f"models:/{settings.model_name}@production")
    p = predict_proba(loaded, X)  # a torch.export (pt2) graph: forward only
    from sklearn.metrics import roc_auc_score

    assert abs(roc_auc_score(y, p) - m["test_auroc"]) < 1e-9

    # The same inputs give the same dataset version, reused rather than rebuilt.
    again = build_dataset(settings, start=first, end=last, lake=lake)
    assert again.data_version == info.data_version and again.reused


def test_patient_split_is_patient_disjoint(history):
    settings, first, last = history
    by_time = build_dataset(settings, start=first, end=last)
    by_patient = build_dataset(settings, start=first, end=last, split="patient")
    assert by_patient.data_version != by_time.data_version
    assert by_patient.patients_in_several_splits == 0
    assert by_time.patients_in_several_splits > 0  # a time split shares patients; it is reported
    # The time split leaves out the 24 h before each cut point (labels that look into the next split).
    assert by_time.excluded.get("split_gap", 0) > 0 and "split_gap" not in by_patient.excluded
    assert sum(by_patient.rows.values()) == sum(by_time.rows.values()) + by_time.excluded["split_gap"]
