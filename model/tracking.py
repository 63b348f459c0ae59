"""MLflow tracking, registration and the gated promotion of the adverse-event model.

Where things live
    Runs and the model registry are in the tracking store named by ``settings.mlflow_tracking_uri``:
    the stack's MLflow server (PostgreSQL backend, artifacts proxied into the lake), or a local
    database such as ``sqlite:///path/mlflow.db``. A local store has no server to pick an artifact
    location, so experiments created here get ``{settings.mlflow_artifact_uri}/{experiment}``
    (``file:///...`` or the ``s3://`` lake; the S3 credentials/endpoint come from
    ``settings.s3_env()``).

One candidate = one run (``log_candidate``)
    params, metrics (the required names in ``REQUIRED_METRICS``, all finite), tags (``git_commit``,
    ``data_version``, ``feature_version`` required), the model under ``model/`` (``mlflow.pytorch``,
    ``torch.export`` "pt2" format by default, signature and input example), ``*.png`` files under
    ``plots/`` and every other file (``scaler.pkl``) at the run's artifact root. The model is
    registered as a new version of ``model_name`` and the ``staging`` alias moves to it.

Promotion (``decide_promotion`` then ``apply_promotion``)
    The ``production`` model is loaded from the registry and scored on the candidate's test rows, so
    both AUROCs are measured on the same window. The candidate is promoted when

    * it beats the NEWS2 baseline: ``candidate_auroc > news2_auroc`` (always required: the absolute
      floor when there is no production model yet, and a sanity floor afterwards), and
    * there is no production model, or ``candidate_auroc > production_auroc + min_improvement``
      (``DEFAULT_MIN_IMPROVEMENT = 0.0``: a retrained model that is at least as good on the same
      rows replaces production; raise it to demand a real gain).

    If the production model cannot be loaded or scored on the rows (artifacts gone, a different
    feature count), the decision fails closed: not promoted, with the reason. Every decision is
    logged on the candidate run (tags ``promotion.decision``, ``promotion.reason`` and
    ``promotion.json``) and on the model version.

``decide_promotion`` and ``apply_promotion`` use the tracking URI set by ``configure_tracking``
(``log_candidate`` calls it), which is process-global MLflow state.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "adverse_event_24h"
STAGING_ALIAS = "staging"
PRODUCTION_ALIAS = "production"
DEFAULT_MIN_IMPROVEMENT = 0.0
REQUIRED_METRICS = ("test_auroc", "test_auprc", "test_brier", "test_ece", "news2_test_auroc",
                    "logreg_test_auroc", "val_auroc")
REQUIRED_TAGS = ("git_commit", "data_version", "feature_version")
MODEL_ARTIFACT = "model"
PLOTS_DIR = "plots"
PROMOTION_FILE = "promotion.json"
_SERVER_SCHEMES = ("http://", "https://", "databricks")
_MAX_TAG_CHARS = 5000  # MLflow allows 8000; keep a margin
_SCORE_BATCH_ROWS = 65_536


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server does not answer."""


class PromotionConflictError(RuntimeError):
    """``production`` moved between the decision and its application."""


@dataclass
class PromotionDecision:
    promoted: bool
    reasons: list[str]
    candidate_version: str
    candidate_auroc: float
    production_version: str | None
    production_auroc: float | None  # the production model scored on the candidate's test rows
    news2_auroc: float | None = None
    min_improvement: float | None = None


# --- configuration ----------------------------------------------------------------------------
def _is_server_uri(uri: str) -> bool:
    return uri.startswith(_SERVER_SCHEMES)


def configure_tracking(settings) -> str:
    """Point MLflow (tracking and registry) at ``settings.mlflow_tracking_uri``; return the URI.

    Also exports ``settings.s3_env()`` so clients that write artifacts themselves (a local store
    with an ``s3://`` artifact location) reach the lake. An ``http(s)`` server is probed first so
    that a stopped stack fails at once and clearly, not after MLflow's request retries.
    """
    import mlflow

    uri = settings.mlflow_tracking_uri
    if not uri:
        raise ValueError("settings.mlflow_tracking_uri is not set (VITALSTREAM_MLFLOW_TRACKING_URI)")
    os.environ.update(settings.s3_env())
    if uri.startswith(("http://", "https://")):
        timeout = float(getattr(settings, "mlflow_connect_timeout_s", 5.0))
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # it answered (auth, a proxy path...): reachable; real calls report real errors
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailableError(
                f"MLflow tracking server at {uri} is unreachable ({reason}). Start the local stack "
                f"with `vitalstream stack up`, or point VITALSTREAM_MLFLOW_TRACKING_URI at a running "
                f"server (or at sqlite:///path/mlflow.db for a local store).") from exc
    elif uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///"):])
        if str(db_path) not in ("", ":memory:"):
            db_path.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _artifact_root(settings) -> str:
    root = getattr(settings, "mlflow_artifact_uri", None) or (settings.lake_uri.rstrip("/") + "/mlflow")
    if "://" not in root and not root.startswith("file:"):
        root = Path(root).resolve().as_uri()
    return root.rstrip("/")


def _experiment_id(client, settings, name: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if not _is_server_uri(client.tracking_uri):
            # A local store would put artifacts in ./mlruns of whatever the cwd is.
            location = f"{_artifact_root(settings)}/{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            exp = client.get_experiment_by_name(name)  # created concurrently
    if exp.lifecycle_stage != "active":
        raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or use another name")
    return exp.experiment_id


# --- validation -------------------------------------------------------------------------------
def _validate_metrics(metrics: dict[str, float]) -> dict[str, float]:
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    out: dict[str, float] = {}
    bad: list[str] = []
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            bad.append(f"{key}={value!r}")
            continue
        if key in REQUIRED_METRICS and not math.isfinite(out[key]):
            bad.append(f"{key}={value!r}")
    problems = []
    if missing:
        problems.append(f"missing required metrics: {', '.join(missing)}")
    if bad:
        problems.append(f"non-finite or non-numeric metrics: {', '.join(bad)}")
    if problems:
        raise ValueError("; ".join(problems))
    return out


def _validate_tags(tags: dict[str, str]) -> dict[str, str]:
    out = {str(k): str(v) for k, v in tags.items() if v is not None}
    missing = [k for k in REQUIRED_TAGS if not out.get(k, "").strip()]
    if missing:
        raise ValueError(f"missing required tags: {', '.join(missing)}")
    return out


def _validate_artifacts(artifacts: list[Path]) -> list[tuple[Path, str | None]]:
    placed: list[tuple[Path, str | None]] = []
    seen: dict[str, Path] = {}
    for item in artifacts:
        path = Path(item)
        if not path.is_file():
            raise ValueError(f"artifact {path} does not exist or is not a file")
        folder = PLOTS_DIR if path.suffix.lower() == ".png" else None
        dest = f"{folder}/{path.name}" if folder else path.name
        if dest == MODEL_ARTIFACT or dest == PROMOTION_FILE:
            raise ValueError(f"artifact name {path.name!r} is reserved")
        if dest in seen:
            raise ValueError(f"artifacts {seen[dest]} and {path} would both be logged as {dest}")
        seen[dest] = path
        placed.append((path, folder))
    return placed


def _example(input_example: np.ndarray) -> np.ndarray:
    X = np.asarray(input_example)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"input_example must be a 2-D (n >= 2, F) array, got shape {X.shape} "
                         "(torch.export keeps a batch dimension of 1 static)")
    return np.ascontiguousarray(X, dtype=np.float32)


# --- logging a candidate ------------------------------------------------------------------------
def log_candidate(settings, *, experiment: str, model, input_example: np.ndarray, params: dict,
                  metrics: dict[str, float], tags: dict[str, str], artifacts: list[Path],
                  model_name: str = DEFAULT_MODEL_NAME,
                  serialization_format: str = "pt2") -> tuple[str, str]:
    """Log one trained candidate as a run, register it, point ``staging`` at it.

    Returns ``(run_id, registered version)``. Everything is validated before anything is written:
    a ValueError names missing/non-finite required metrics, missing required tags, missing
    artifact files or a model whose output on ``input_example`` is not ``(n,)`` probabilities.
    ``serialization_format``: "pt2" (``torch.export``; loads without unpickling code) or "pickle"
    (any module, but loaders must set MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true).
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    metric_values = _validate_metrics(metrics)
    tag_values = _validate_tags(tags)
    placed = _validate_artifacts(artifacts)
    X = _example(input_example)
    if not model_name:
        raise ValueError("model_name must not be empty")

    was_training = model.training
    model.eval()  # export and score in inference mode (dropout off), whatever the caller left
    try:
        with torch.no_grad():
            output = model(torch.from_numpy(X)).detach().cpu().numpy().astype(np.float32)
        if output.shape != (X.shape[0],):
            raise ValueError(f"model output on input_example has shape {output.shape}, "
                             f"expected ({X.shape[0]},)")
        if not (np.all(np.isfinite(output)) and np.all((output >= 0) & (output <= 1))):
            raise ValueError("model output on input_example is not probabilities in [0, 1]")
        signature = infer_signature(X, output)

        configure_tracking(settings)
        client = mlflow.MlflowClient()
        experiment_id = _experiment_id(client, settings, experiment)
        run_tags = {**tag_values, "model_name": model_name}
        nested = mlflow.active_run() is not None
        with mlflow.start_run(experiment_id=experiment_id, tags=run_tags, nested=nested) as run:
            run_id = run.info.run_id
            if params:
                mlflow.log_params({str(k): v for k, v in params.items()})
            mlflow.log_metrics(metric_values)
            for path, folder in placed:
                mlflow.log_artifact(str(path), artifact_path=folder)
            info = mlflow.pytorch.log_model(
                model, name=MODEL_ARTIFACT, signature=signature, input_example=X,
                registered_model_name=model_name, serialization_format=serialization_format,
                pip_requirements=mlflow.pytorch.get_default_pip_requirements())
            version = str(info.registered_model_version)
            mlflow.set_tag("registered_version", version)
    finally:
        model.train(was_training)

    for key, value in tag_values.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_model_version_tag(model_name, version, "run_id", run_id)
    client.set_registered_model_alias(model_name, STAGING_ALIAS, version)
    logger.info("logged %s version %s (run %s); %s -> %s", model_name, version, run_id,
                STAGING_ALIAS, version)
    return run_id, version


# --- promotion --------------------------------------------------------------------------------
def _alias_version(client, model_name: str, alias: str) -> str | None:
    """The version holding ``alias``, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (
        INVALID_PARAMETER_VALUE,
        RESOURCE_DOES_NOT_EXIST,
        ErrorCode,
    )

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:
        absent = exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST) or (
            exc.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and "not found" in str(exc).lower())
        if absent:
            return None
        raise


def predict_proba(model, X: np.ndarray) -> np.ndarray:
    """Probabilities ``(n,)`` from a model of the convention: ``predict_proba`` if any, else forward."""
    import torch

    X = np.ascontiguousarray(X, dtype=np.float32)
    if callable(getattr(model, "predict_proba", None)):
        p = np.asarray(model.predict_proba(X), dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 2:
            p = p[:, 1]
    else:
        parts = []
        with torch.no_grad():
            for start in range(0, len(X), _SCORE_BATCH_ROWS):
                out = model(torch.from_numpy(X[start:start + _SCORE_BATCH_ROWS]))
                parts.append(out.detach().cpu().numpy().reshape(-1).astype(np.float64))
        p = np.concatenate(parts) if parts else np.empty(0)
    if p.shape != (len(X),):
        raise ValueError(f"model returned shape {p.shape} for {len(X)} rows")
    if not np.all(np.isfinite(p)):
        raise ValueError("model returned non-finite probabilities")
    return p


def decide_promotion(*, model_name: str, candidate_version: str, candidate_auroc: float,
                     news2_auroc: float, X_test: np.ndarray, y_test: np.ndarray,
                     min_improvement: float) -> PromotionDecision:
    """Decide whether ``candidate_version`` should take ``production`` (no side effects).

    ``candidate_auroc`` and ``news2_auroc`` are the caller's test AUROCs on ``(X_test, y_test)``;
    the current production model is scored here on the same rows.
    """
    import mlflow
    import mlflow.pytorch
    from sklearn.metrics import roc_auc_score

    candidate_version = str(candidate_version)
    candidate_auroc = float(candidate_auroc)
    news2_auroc = float(news2_auroc)
    min_improvement = float(min_improvement)
    for name, value in (("candidate_auroc", candidate_auroc), ("news2_auroc", news2_auroc),
                        ("min_improvement", min_improvement)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if min_improvement < 0:
        raise ValueError(f"min_improvement must be >= 0 (a gate never admits a regression), "
                         f"got {min_improvement}")
    X = np.asarray(X_test)
    y = np.asarray(y_test).reshape(-1)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X_test {X.shape} and y_test {y.shape} do not describe the same rows")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("y_test must contain both classes 0 and 1 (AUROC is undefined otherwise)")

    client = mlflow.MlflowClient()
    production_version = _alias_version(client, model_name, PRODUCTION_ALIAS)
    production_auroc: float | None = None
    reasons: list[str] = []

    floor_ok = candidate_auroc > news2_auroc
    reasons.append(f"NEWS2 floor: candidate test AUROC {candidate_auroc:.4f} "
                   f"{'>' if floor_ok else '<='} NEWS2 test AUROC {news2_auroc:.4f}"
                   f" ({'passed' if floor_ok else 'failed'})")

    if production_version is None:
        gate_ok = True
        reasons.append(f"no {PRODUCTION_ALIAS} version of {model_name} yet: the NEWS2 floor decides")
    elif production_version == candidate_version:
        gate_ok = False
        reasons.append(f"version {candidate_version} already holds {PRODUCTION_ALIAS}")
    else:
        try:
            prod_model = mlflow.pytorch.load_model(f"models:/{model_name}/{production_version}")
            production_auroc = float(roc_auc_score(y, predict_proba(prod_model, X)))
        except Exception as exc:  # noqa: BLE001 - fail closed with the reason, whatever broke
            gate_ok = False
            reasons.append(f"{PRODUCTION_ALIAS} version {production_version} could not be scored on "
                           f"the candidate's test rows ({type(exc).__name__}: {str(exc)[:300]}); "
                           f"not promoting without a comparison (promote by hand if intended)")
        else:
            threshold = production_auroc + min_improvement
            gate_ok = candidate_auroc > threshold  # "beats": a tie keeps the model already in production
            reasons.append(f"gate: candidate test AUROC {candidate_auroc:.4f} "
                           f"{'>' if gate_ok else '<='} {PRODUCTION_ALIAS} v{production_version} "
                           f"AUROC {production_auroc:.4f} on the same rows + min_improvement "
                           f"{min_improvement:g} ({'passed' if gate_ok else 'failed'})")

    decision = PromotionDecision(
        promoted=bool(floor_ok and gate_ok), reasons=reasons, candidate_version=candidate_version,
        candidate_auroc=candidate_auroc, production_version=production_version,
        production_auroc=production_auroc, news2_auroc=news2_auroc, min_improvement=min_improvement)
    logger.info("promotion of %s v%s: %s; %s", model_name, candidate_version,
                "promoted" if decision.promoted else "rejected", "; ".join(reasons))
    return decision


def apply_promotion(run_id: str, model_name: str, decision: PromotionDecision) -> None:
    """Move ``production`` to the candidate if promoted; record the decision on run and version.

    Raises PromotionConflictError (recording ``promotion.decision=stale``, alias untouched) when a
    promoting decision was taken against a ``production`` version that no longer holds the alias.
    """
    import mlflow

    client = mlflow.MlflowClient()
    outcome = "promoted" if decision.promoted else "rejected"
    reasons = list(decision.reasons)
    conflict: str | None = None
    if decision.promoted:
        current = _alias_version(client, model_name, PRODUCTION_ALIAS)
        if current != decision.production_version:
            conflict = (f"{PRODUCTION_ALIAS} is version {current}, but the decision compared against "
                        f"{decision.production_version}: decide again")
            outcome = "stale"
            reasons.append(conflict)
        elif current != decision.candidate_version:
            client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, decision.candidate_version)

    reason_text = "; ".join(reasons)
    if len(reason_text) > _MAX_TAG_CHARS:
        reason_text = reason_text[:_MAX_TAG_CHARS - 3] + "..."
    record: dict[str, Any] = {**asdict(decision), "decision": outcome, "reasons": reasons,
                              "model_name": model_name, "run_id": run_id,
                              "decided_at": datetime.now(UTC).isoformat()}
    client.set_tag(run_id, "promotion.decision", outcome)
    client.set_tag(run_id, "promotion.reason", reason_text)
    if decision.production_version is not None:
        client.set_tag(run_id, "promotion.production_version", decision.production_version)
    if decision.production_auroc is not None:
        client.set_tag(run_id, "promotion.production_auroc", f"{decision.production_auroc:.6f}")
    client.log_dict(run_id, json.loads(json.dumps(record, default=str)), PROMOTION_FILE)
    client.set_model_version_tag(model_name, decision.candidate_version, "promotion.decision", outcome)
    if conflict:
        raise PromotionConflictError(conflict)
    logger.info("%s v%s: %s", model_name, decision.candidate_version, outcome)


# --- provenance -------------------------------------------------------------------------------
def git_commit(repo: Path | None = None) -> str:
    """Short SHA of HEAD, ``-dirty`` when tracked files differ from it, "unknown" outside git.

    Untracked files do not count (as ``git describe --dirty``). ``repo`` defaults to the
    repository this module lives in.
    """
    where = Path(repo) if repo is not None else Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                              timeout=30, check=False)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = head.stdout.strip()
    return f"{sha}-dirty" if status.returncode != 0 or status.stdout.strip() else sha
