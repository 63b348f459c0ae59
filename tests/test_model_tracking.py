"""model/tracking.py against the real MLflow server of the stack (and a local SQLite store)."""
from __future__ import annotations

import json
import pickle
import socket
import subprocess
import uuid
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.metrics import roc_auc_score

from model import tracking

pytestmark = pytest.mark.stack

N_FEATURES = 5
TRUE_W = np.array([2.0, -1.5, 1.0, 0.8, -0.6])


class TinyRisk(torch.nn.Module):
    """The model convention in miniature: NaN-tolerant input -> (n,) probabilities."""

    def __init__(self, weights: np.ndarray, bias: float = 0.0) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(len(weights), 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(np.asarray(weights)[None, :], dtype=torch.float32))
            self.lin.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.lin(torch.nan_to_num(x, nan=0.0))).squeeze(-1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scores(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(X, dtype=np.float32))).numpy()


def auroc(model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    return float(roc_auc_score(y, scores(model, X)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(600, N_FEATURES)).astype(np.float32)
    y = (rng.random(600) < 1 / (1 + np.exp(-(X @ TRUE_W - 1.0)))).astype(int)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values, as in the feature vectors
    return X, y


@pytest.fixture(scope="module")
def models(data) -> dict[str, TinyRisk]:
    X, y = data
    m = {"best": TinyRisk(TRUE_W, -1.0), "good": TinyRisk(TRUE_W * [1, 0, 0, 0, 0], -1.0),
         "bad": TinyRisk(-TRUE_W, -1.0)}
    a = {k: auroc(v, X, y) for k, v in m.items()}
    assert a["best"] > a["good"] + 0.05 and a["good"] > 0.6 and a["bad"] < 0.5, a  # the scenario holds
    return m


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("artifacts")
    scaler = d / "scaler.pkl"
    scaler.write_bytes(pickle.dumps({"means": [0.0] * N_FEATURES, "stds": [1.0] * N_FEATURES}))
    pngs = []
    for name in ("calibration.png", "roc.png"):
        p = d / name
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())  # content is only carried, not decoded
        pngs.append(p)
    return [scaler, *pngs]


@pytest.fixture(autouse=True)
def stack_tracking(stack):
    """Every test starts and ends pointed at the stack's server (the SQLite test moves it)."""
    tracking.configure_tracking(stack)
    yield stack
    tracking.configure_tracking(stack)


def metrics_for(model, data, **overrides) -> dict[str, float]:
    X, y = data
    m = {"test_auroc": auroc(model, X, y), "test_auprc": 0.5, "test_brier": 0.2, "test_ece": 0.05,
         "news2_test_auroc": 0.6, "logreg_test_auroc": 0.7, "val_auroc": 0.71, "train_loss": 0.4}
    m.update(overrides)
    return m


TAGS = {"git_commit": "abc1234", "data_version": "offline@2026-11-26", "feature_version": "v1"}


def log(settings, model, data, files, model_name, experiment, **kw):
    X, _ = data
    return tracking.log_candidate(
        settings, experiment=experiment, model=model, input_example=X[:8], params={"lr": 0.01, "hidden": 64},
        metrics=kw.pop("metrics", None) or metrics_for(model, data), tags=kw.pop("tags", TAGS),
        artifacts=files, model_name=model_name, **kw)


def alias(name: str, which: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, which).version)
    except MlflowException:
        return None


@pytest.fixture(scope="module")
def first_candidate(stack, models, data, files):
    """One candidate of a fresh model name, never promoted (shared by two tests)."""
    tracking.configure_tracking(stack)
    u = uuid.uuid4().hex[:10]
    name, experiment = f"ae24_first_{u}", f"tracking-first-{u}"
    run_id, version = log(stack, models["good"], data, files, name, experiment)
    return name, experiment, run_id, version


def test_candidate_run_has_params_metrics_tags_model_and_artifacts(first_candidate, models, data):
    name, experiment, run_id, version = first_candidate
    X, _ = data
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.params == {"lr": "0.01", "hidden": "64"}
    expected = metrics_for(models["good"], data)
    assert run.data.metrics == pytest.approx(expected)
    for key in tracking.REQUIRED_METRICS:
        assert key in run.data.metrics
    for key, value in TAGS.items():
        assert run.data.tags[key] == value
    assert run.data.tags["registered_version"] == version

    listed = {f.path for f in client.list_artifacts(run_id)}
    assert "scaler.pkl" in listed
    assert {f.path for f in client.list_artifacts(run_id, "plots")} == {"plots/calibration.png", "plots/roc.png"}
    scaler = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="scaler.pkl")
    assert pickle.loads(Path(scaler).read_bytes())["stds"] == [1.0] * N_FEATURES

    mv = client.get_model_version(name, version)
    assert mv.run_id == run_id
    assert {k: mv.tags[k] for k in TAGS} == TAGS
    assert alias(name, "staging") == version
    assert alias(name, "production") is None

    loaded = mlflow.pytorch.load_model(f"models:/{name}@staging")
    np.testing.assert_allclose(scores(loaded, X), scores(models["good"], X), rtol=1e-6, atol=1e-7)
    assert scores(loaded, X).shape == (len(X),)  # a dynamic batch dimension, not the example's 8
    info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, N_FEATURES)
    assert info.saved_input_example_info is not None


def test_first_candidate_below_news2_floor_is_not_promoted(first_candidate, data):
    name, _, run_id, version = first_candidate
    X, y = data
    cand = float(MlflowClient().get_run(run_id).data.metrics["test_auroc"])
    d = tracking.decide_promotion(model_name=name, candidate_version=version, candidate_auroc=cand,
                                  news2_auroc=cand + 0.01, X_test=X, y_test=y, min_improvement=0.0)
    assert not d.promoted and d.production_version is None and d.production_auroc is None
    assert "NEWS2" in " ".join(d.reasons) and "failed" in d.reasons[0]
    tracking.apply_promotion(run_id, name, d)
    assert alias(name, "production") is None
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["promotion.decision"] == "rejected"
    assert "NEWS2" in tags["promotion.reason"]
    record = mlflow.artifacts.load_dict(f"runs:/{run_id}/promotion.json")
    assert record["promoted"] is False and record["decision"] == "rejected"
    assert record["candidate_version"] == version and record["news2_auroc"] == pytest.approx(cand + 0.01)


def test_gate_promotes_only_a_better_candidate(stack, models, data, files, unique):
    X, y = data
    name, experiment = f"ae24_gate_{unique}", f"tracking-gate-{unique}"
    client = MlflowClient()
    a_good, a_bad, a_best = (auroc(models[k], X, y) for k in ("good", "bad", "best"))

    # 1. No production yet: above the NEWS2 floor -> promoted.
    run1, v1 = log(stack, models["good"], data, files, name, experiment)
    d1 = tracking.decide_promotion(model_name=name, candidate_version=v1, candidate_auroc=a_good,
                                   news2_auroc=a_good - 0.02, X_test=X, y_test=y, min_improvement=0.0)
    assert d1.promoted and d1.production_version is None
    assert "NEWS2" in " ".join(d1.reasons)
    tracking.apply_promotion(run1, name, d1)
    assert alias(name, "production") == v1
    assert client.get_run(run1).data.tags["promotion.decision"] == "promoted"

    # 2. A worse candidate: staging moves to it, production stays.
    run2, v2 = log(stack, models["bad"], data, files, name, experiment,
                   metrics=metrics_for(models["bad"], data))
    d2 = tracking.decide_promotion(model_name=name, candidate_version=v2, candidate_auroc=a_bad,
                                   news2_auroc=0.0, X_test=X, y_test=y, min_improvement=0.0)
    assert not d2.promoted
    assert d2.production_version == v1 and d2.production_auroc == pytest.approx(a_good, abs=1e-9)
    tracking.apply_promotion(run2, name, d2)
    assert alias(name, "production") == v1 and alias(name, "staging") == v2
    tags2 = client.get_run(run2).data.tags
    assert tags2["promotion.decision"] == "rejected" and "gate" in tags2["promotion.reason"]
    assert client.get_model_version(name, v2).tags["promotion.decision"] == "rejected"
    rec2 = mlflow.artifacts.load_dict(f"runs:/{run2}/promotion.json")
    assert rec2["production_version"] == v1 and rec2["production_auroc"] == pytest.approx(a_good, abs=1e-9)
    assert rec2["promoted"] is False and rec2["reasons"] == d2.reasons

    # 3. A better candidate, but a min_improvement gate it does not clear -> not promoted ...
    run3, v3 = log(stack, models["best"], data, files, name, experiment,
                   metrics=metrics_for(models["best"], data))
    strict = tracking.decide_promotion(model_name=name, candidate_version=v3, candidate_auroc=a_best,
                                       news2_auroc=0.5, X_test=X, y_test=y,
                                       min_improvement=a_best - a_good + 0.001)
    assert not strict.promoted
    # ... and with the default gate: promoted, production moves to it.
    d3 = tracking.decide_promotion(model_name=name, candidate_version=v3, candidate_auroc=a_best,
                                   news2_auroc=0.5, X_test=X, y_test=y,
                                   min_improvement=tracking.DEFAULT_MIN_IMPROVEMENT)
    assert d3.promoted and d3.production_version == v1
    tracking.apply_promotion(run3, name, d3)
    assert alias(name, "production") == v3 and alias(name, "staging") == v3
    tags3 = client.get_run(run3).data.tags
    assert tags3["promotion.decision"] == "promoted" and tags3["promotion.production_version"] == v1
    rec3 = mlflow.artifacts.load_dict(f"runs:/{run3}/promotion.json")
    assert rec3["promoted"] is True and rec3["candidate_version"] == v3
    loaded = mlflow.pytorch.load_model(f"models:/{name}@production")
    np.testing.assert_allclose(scores(loaded, X), scores(models["best"], X), rtol=1e-6, atol=1e-7)

    # 4. A stale decision (taken when there was no production) does not move the alias.
    with pytest.raises(tracking.PromotionConflictError, match="decide again"):
        tracking.apply_promotion(run1, name, d1)
    assert alias(name, "production") == v3
    assert client.get_run(run1).data.tags["promotion.decision"] == "stale"

    # 5. The version already in production is not "promoted" again.
    again = tracking.decide_promotion(model_name=name, candidate_version=v3, candidate_auroc=a_best,
                                      news2_auroc=0.5, X_test=X, y_test=y, min_improvement=0.0)
    assert not again.promoted and "already" in " ".join(again.reasons)


@pytest.mark.parametrize("drop", ["test_auroc", "news2_test_auroc", "val_auroc"])
def test_missing_required_metric_is_rejected_before_anything_is_logged(stack, models, data, files, unique, drop):
    experiment = f"tracking-invalid-{unique}"
    metrics = metrics_for(models["good"], data)
    del metrics[drop]
    with pytest.raises(ValueError, match=drop):
        log(stack, models["good"], data, files, f"ae24_invalid_{unique}", experiment, metrics=metrics)
    assert mlflow.get_experiment_by_name(experiment) is None


def test_non_finite_metric_missing_tag_and_missing_file_are_rejected(stack, models, data, files, unique, tmp_path):
    experiment = f"tracking-invalid-{unique}"
    name = f"ae24_invalid_{unique}"
    with pytest.raises(ValueError, match="test_brier"):
        log(stack, models["good"], data, files, name, experiment,
            metrics=metrics_for(models["good"], data, test_brier=float("nan")))
    with pytest.raises(ValueError, match="test_auprc, test_ece"):
        m = metrics_for(models["good"], data)
        del m["test_auprc"], m["test_ece"]
        log(stack, models["good"], data, files, name, experiment, metrics=m)
    for missing in ("git_commit", "data_version", "feature_version"):
        tags = {k: v for k, v in TAGS.items() if k != missing}
        with pytest.raises(ValueError, match=missing):
            log(stack, models["good"], data, files, name, experiment, tags=tags)
    with pytest.raises(ValueError, match="does not exist"):
        log(stack, models["good"], data, [*files, tmp_path / "absent.png"], name, experiment)
    assert mlflow.get_experiment_by_name(experiment) is None
    with pytest.raises(MlflowException):
        MlflowClient().get_registered_model(name)


def test_unreachable_server_names_stack_up(stack):
    down = stack.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(tracking.TrackingUnavailableError, match="vitalstream stack up"):
        tracking.configure_tracking(down)


def test_decide_rejects_inputs_without_both_classes(first_candidate, data):
    name, _, _, version = first_candidate
    X, _ = data
    with pytest.raises(ValueError, match="both classes"):
        tracking.decide_promotion(model_name=name, candidate_version=version, candidate_auroc=0.8,
                                  news2_auroc=0.6, X_test=X, y_test=np.zeros(len(X)), min_improvement=0.0)
    with pytest.raises(ValueError, match="min_improvement"):
        tracking.decide_promotion(model_name=name, candidate_version=version, candidate_auroc=0.8,
                                  news2_auroc=0.6, X_test=X, y_test=data[1], min_improvement=-0.1)


def test_sqlite_store_with_file_artifacts(stack, models, data, files, tmp_path, unique):
    """Local fallback: SQLite tracking + registry, artifacts in a folder; the gate fails closed when
    production cannot score the candidate's rows (a different feature count)."""
    X, y = data
    local = stack.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp_path}/db/mlflow.db",
                                     "mlflow_artifact_uri": (tmp_path / "artifacts").as_uri()})
    assert tracking.configure_tracking(local) == local.mlflow_tracking_uri
    name, experiment = f"ae24_sqlite_{unique}", f"tracking-sqlite-{unique}"
    a_good = auroc(models["good"], X, y)

    run1, v1 = log(local, models["good"], data, files, name, experiment)
    assert mlflow.get_tracking_uri() == local.mlflow_tracking_uri
    assert (tmp_path / "db" / "mlflow.db").is_file()
    run_dir = tmp_path / "artifacts" / experiment / run1 / "artifacts"
    assert (run_dir / "scaler.pkl").read_bytes() == files[0].read_bytes()
    assert (run_dir / "plots" / "roc.png").is_file()
    assert alias(name, "staging") == v1
    d1 = tracking.decide_promotion(model_name=name, candidate_version=v1, candidate_auroc=a_good,
                                   news2_auroc=0.55, X_test=X, y_test=y, min_improvement=0.0)
    assert d1.promoted
    tracking.apply_promotion(run1, name, d1)
    assert alias(name, "production") == v1
    assert json.loads((run_dir / "promotion.json").read_text())["decision"] == "promoted"
    loaded = mlflow.pytorch.load_model(f"models:/{name}@production")
    np.testing.assert_allclose(scores(loaded, X), scores(models["good"], X), rtol=1e-6, atol=1e-7)

    # A candidate on a new feature set (6 columns): production cannot be compared -> not promoted.
    X6 = np.concatenate([X, X[:, :1]], axis=1)
    wide = TinyRisk(np.append(TRUE_W, 0.5), -1.0)
    run2, v2 = tracking.log_candidate(
        local, experiment=experiment, model=wide, input_example=X6[:8], params={},
        metrics=metrics_for(wide, (X6, y)), tags={**TAGS, "feature_version": "v2"}, artifacts=files,
        model_name=name)
    d2 = tracking.decide_promotion(model_name=name, candidate_version=v2, candidate_auroc=auroc(wide, X6, y),
                                   news2_auroc=0.5, X_test=X6, y_test=y, min_improvement=0.0)
    assert not d2.promoted and d2.production_version == v1 and d2.production_auroc is None
    assert "could not be scored" in " ".join(d2.reasons)
    tracking.apply_promotion(run2, name, d2)
    assert alias(name, "production") == v1 and alias(name, "staging") == v2


def test_git_commit(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    assert tracking.git_commit(repo) == "unknown"  # no commit yet
    (repo / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    sha = git("rev-parse", "--short", "HEAD")
    assert tracking.git_commit(repo) == sha
    (repo / "untracked.txt").write_text("x")
    assert tracking.git_commit(repo) == sha
    (repo / "a.txt").write_text("2")
    assert tracking.git_commit(repo) == f"{sha}-dirty"
    here = tracking.git_commit()
    assert here != "unknown" and here.split("-")[0] == subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=Path(tracking.__file__).parent,
        capture_output=True, text=True, check=True).stdout.strip()
