"""model.loader / model.network / model.training on synthetic Parquet data (no services)."""
from __future__ import annotations

import pickle
import tracemalloc
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import brier_score_loss, roc_auc_score

from model import training
from model.loader import ParquetSplit, make_dataloader
from model.network import Preprocessor, PreprocessorFitter, RiskModel, fit_platt
from model.training import TrainConfig, fit
from tables.features.registry import FEATURE_INDEX, FEATURE_NAMES, N_FEATURES

HOUR = 3_600_000
ROW_ID = "hours_since_enrollment"  # loader tests carry the row number in this feature
CONSTANT = "age"  # always 60 in the synthetic data
ALL_NAN = "lab_alt_latest"  # never observed in the synthetic data
SIGNAL = ("heart_rate_latest", "resp_rate_latest", "spo2_latest")
# One thread: on a busy 2-core machine, 2 intra-op threads on these tiny batches are ~10x slower.
CFG = TrainConfig(hidden=(32, 16), dropout=0.1, lr=3e-3, batch_rows=256, max_epochs=5, patience=2, seed=7,
                  threads=1)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def make_data(n: int, seed: int, signal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Planted logistic signal in three vitals (10 % NaN each), 30 noise columns, a constant and NaN columns."""
    rng = np.random.default_rng(seed)
    X = np.full((n, N_FEATURES), np.nan)
    noise_cols = [j for j in range(N_FEATURES) if FEATURE_NAMES[j] not in (*SIGNAL, CONSTANT, ALL_NAN, ROW_ID)][:30]
    X[:, noise_cols] = rng.normal(size=(n, len(noise_cols)))
    hr, rr, sp = rng.normal(80, 15, n), rng.normal(18, 4, n), rng.normal(96, 2, n)
    logit = -2.0 + 1.6 * (hr - 80) / 15 + 1.3 * (rr - 18) / 4 - 1.1 * (sp - 96) / 2
    if not signal:
        logit = np.full(n, -1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    for name, v in zip(SIGNAL, (hr, rr, sp), strict=True):
        v = v.copy()
        v[rng.random(n) < 0.1] = np.nan
        X[:, FEATURE_INDEX[name]] = v
    X[:, FEATURE_INDEX[CONSTANT]] = 60.0
    X[:, FEATURE_INDEX[ROW_ID]] = np.arange(n, dtype=np.float64)
    return X, y


def write_split(directory, X: np.ndarray, y: np.ndarray, n_files: int, row_group_rows: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, idx in enumerate(np.array_split(np.arange(len(y)), n_files)):
        cols = {name: pa.array(X[idx, j]) for j, name in enumerate(FEATURE_NAMES)}
        cols["label"] = pa.array(y[idx], type=pa.int8())
        cols["patient_id"] = pa.array([f"P{i % 40:03d}" for i in idx])
        cols["timestamp"] = pa.array(idx.astype(np.int64) * 60_000, type=pa.timestamp("ms"))
        cols["event_id"] = pa.array([f"e{i}" for i in idx])
        cols["onset_ms"] = pa.array(np.where(y[idx] == 1, idx.astype(np.int64) * 60_000 + HOUR, -1), type=pa.int64())
        path = directory / f"part-{k:03d}.parquet"
        pq.write_table(pa.table(cols), path, row_group_size=row_group_rows)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_data")
    Xt, yt = make_data(4000, seed=1)
    Xv, yv = make_data(1500, seed=2)
    train = write_split(root / "train", Xt, yt, n_files=3, row_group_rows=450)
    val = write_split(root / "val", Xv, yv, n_files=1, row_group_rows=1000)
    return {"root": root, "Xt": Xt, "yt": yt, "Xv": Xv, "yv": yv,
            "train": ParquetSplit(train), "val": ParquetSplit(val)}


@pytest.fixture(scope="module")
def trained(data):
    return fit(data["train"], data["val"], CFG)


# -- loader -----------------------------------------------------------------------------------------


def _collect(split, **kw):
    batches = list(split.iter_batches(**kw))
    X = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    return batches, X, y


def test_split_metadata_and_required_columns(data, tmp_path):
    split = data["train"]
    assert split.num_rows == 4000 and split.num_rows() == 4000 and len(split.paths) == 3
    assert split.label_counts() == (int((data["yt"] == 0).sum()), int(data["yt"].sum()))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"label": pa.array([0, 1], type=pa.int8())}), bad)
    with pytest.raises(ValueError, match="lacks required column"):
        ParquetSplit([str(bad)])


def test_iter_batches_every_row_once_shuffled(data):
    split, yt = data["train"], data["yt"]
    rid = FEATURE_INDEX[ROW_ID]
    batches, X, y = _collect(split, batch_rows=256, shuffle=True, seed=3, buffer_rows=1024)
    sizes = [len(b[0]) for b in batches]
    assert max(sizes) == 256 and all(s == 256 for s in sizes[:-1])
    assert all(b[0].dtype == np.float32 and b[0].shape[1] == N_FEATURES and b[1].dtype == np.float32 for b in batches)
    ids = X[:, rid].astype(np.int64)
    assert np.array_equal(np.sort(ids), np.arange(4000))  # every row exactly once
    assert y.sum() == yt.sum() and np.array_equal(y, yt[ids].astype(np.float32))  # labels stay with their rows
    assert not np.array_equal(ids, np.arange(4000))
    assert np.ptp(ids[:256]) > 256  # the first batch mixes rows from several places
    # Row groups are read in a random order: with a buffer of two batches, the first batch comes from
    # the first two row groups read, which are not always a file's first two (rows [start, start + 900)).
    starts = (0, 1334, 2667)
    first_ids = [next(split.iter_batches(256, True, s, buffer_rows=512))[0][:, rid] for s in range(8)]
    assert any(not any(np.all((ids >= s) & (ids < s + 900)) for s in starts) for ids in first_ids)
    _, X2, _ = _collect(split, batch_rows=256, shuffle=True, seed=3, buffer_rows=1024)
    _, X3, _ = _collect(split, batch_rows=256, shuffle=True, seed=4, buffer_rows=1024)
    assert np.array_equal(X2[:, rid], X[:, rid])  # same seed, same order
    assert not np.array_equal(X3[:, rid], X[:, rid])  # new seed, new order
    _, X4, y4 = _collect(split, batch_rows=300, shuffle=False, seed=0)
    assert np.array_equal(X4[:, rid], np.arange(4000)) and np.array_equal(y4, yt.astype(np.float32))
    np.testing.assert_array_equal(X4, data["Xt"].astype(np.float32))  # values and NaNs preserved


def test_loader_streams_with_bounded_memory(tmp_path, monkeypatch):
    n = 40_000
    X = np.full((n, N_FEATURES), np.nan)
    X[:, FEATURE_INDEX[ROW_ID]] = np.arange(n)
    X[:, :8] = np.random.default_rng(0).normal(size=(n, 8))
    y = (np.arange(n) % 7 == 0).astype(np.int8)
    split = ParquetSplit(write_split(tmp_path, X, y, n_files=2, row_group_rows=5000))
    del X

    def forbidden(*a, **k):
        raise AssertionError("the loader must stream, not read whole files/row groups")

    monkeypatch.setattr(pq.ParquetFile, "read", forbidden)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", forbidden)
    monkeypatch.setattr(pq, "read_table", forbidden)
    full_bytes = n * N_FEATURES * 4
    tracemalloc.start()
    try:
        rows = label_sum = max_batch = 0
        for xb, yb in split.iter_batches(batch_rows=256, shuffle=True, seed=0, buffer_rows=1024):
            rows += len(xb)
            label_sum += int(yb.sum())
            max_batch = max(max_batch, len(xb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == n and label_sum == int(y.sum()) and max_batch == 256
    # Buffer (1024 + 1024 rows) + its permuted copy + one decoded chunk: ~4 MB, whatever the split size.
    assert peak < full_bytes / 5, f"peak {peak} bytes for a {full_bytes}-byte split"


def test_dataloader_filesystem_and_directories(data):
    root = data["root"]
    fs = pafs.SubTreeFileSystem(str(root), pafs.LocalFileSystem())
    split = ParquetSplit(["train"], filesystem=fs)  # a directory is expanded to its Parquet files
    assert split.num_rows == 4000 and [p.split("/")[-1] for p in split.paths] == [
        "part-000.parquet", "part-001.parquet", "part-002.parquet"]
    dl = make_dataloader(split, batch_rows=1000, shuffle=True, seed=1, buffer_rows=2000)
    assert dl.batch_size is None
    got = list(dl)
    assert [len(x) for x, _ in got] == [1000] * 4
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape[1] == N_FEATURES for x, _ in got)
    ids = torch.cat([x[:, FEATURE_INDEX[ROW_ID]] for x, _ in got]).numpy().astype(int)
    assert np.array_equal(np.sort(ids), np.arange(4000))
    assert float(sum(y.sum() for _, y in got)) == float(data["yt"].sum())


def test_to_numpy_with_extra_columns(data):
    X, y, extra = data["val"].to_numpy(["patient_id", "onset_ms", "timestamp"])
    np.testing.assert_array_equal(X, data["Xv"].astype(np.float32))
    np.testing.assert_array_equal(y, data["yv"].astype(np.float32))
    assert extra["patient_id"][0] == "P000" and len(extra["patient_id"]) == 1500
    assert extra["onset_ms"].dtype == np.int64 and np.array_equal(extra["onset_ms"] >= 0, data["yv"] == 1)
    assert extra["timestamp"].dtype.kind == "M"
    with pytest.raises(ValueError, match="not in every file"):
        data["val"].to_numpy(["no_such_column"])


# -- preprocessing ----------------------------------------------------------------------------------


def test_streaming_preprocessor_matches_exact_statistics(data, tmp_path):
    X = data["Xt"]
    fitter = PreprocessorFitter(reservoir_rows=10_000)
    for i in range(0, len(X), 333):  # uneven batches
        fitter.update(X[i:i + 333].astype(np.float32))
    pre = fitter.finalize()
    X32 = X.astype(np.float32).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        med = np.nanmedian(X32, axis=0)
    med = np.where(np.isnan(med), 0.0, med)
    imputed = np.where(np.isnan(X32), med, X32)
    np.testing.assert_allclose(pre.medians, med, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pre.means, imputed.mean(axis=0), rtol=1e-9, atol=1e-9)
    std = imputed.std(axis=0, ddof=1)
    std = np.where(std < 1e-6, 1.0, std)
    np.testing.assert_allclose(pre.stds, std, rtol=1e-7)
    c, a = FEATURE_INDEX[CONSTANT], FEATURE_INDEX[ALL_NAN]
    assert (pre.medians[c], pre.means[c], pre.stds[c]) == (60.0, 60.0, 1.0)
    assert (pre.medians[a], pre.means[a], pre.stds[a]) == (0.0, 0.0, 1.0)
    assert pre.n_rows == 4000 and pre.feature_names == list(FEATURE_NAMES)
    back = Preprocessor.load(pre.save(tmp_path / "scaler.pkl"))
    assert np.array_equal(back.stds, pre.stds) and back.feature_version == pre.feature_version
    assert isinstance(pickle.loads((tmp_path / "scaler.pkl").read_bytes()), dict)  # plain content


def test_reservoir_medians_are_close_with_a_small_reservoir(data):
    X = data["Xt"]
    pre = Preprocessor.fit((X[i:i + 500] for i in range(0, len(X), 500)), reservoir_rows=800, seed=1)
    j = FEATURE_INDEX["heart_rate_latest"]
    assert abs(pre.medians[j] - np.nanmedian(X[:, j])) < 3.0  # N(80, 15): sampling error ~0.7


def test_fit_platt_recovers_parameters():
    rng = np.random.default_rng(0)
    z = rng.normal(size=20_000)
    y = rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * z - 1.0)))
    a, b = fit_platt(z, y)
    assert abs(a - 2.0) < 0.1 and abs(b + 1.0) < 0.1
    with pytest.raises(ValueError, match="both"):
        fit_platt(z, np.zeros_like(z))


# -- training ---------------------------------------------------------------------------------------


def test_fit_beats_chance_and_keeps_the_best_epoch(trained, data):
    r = trained
    assert r.val_auroc > 0.75
    aurocs = [h["val_auroc"] for h in r.history]
    assert r.val_auroc == max(aurocs) and r.best_epoch == 1 + int(np.argmax(aurocs))
    assert {"epoch", "train_loss", "val_auroc", "val_loss", "seconds"} <= set(r.history[0])
    assert r.pos_weight == pytest.approx((data["yt"] == 0).sum() / data["yt"].sum())
    p = r.model.predict_proba(data["Xv"])
    assert p.shape == (1500,) and p.dtype == np.float64
    assert roc_auc_score(data["yv"], p) == pytest.approx(r.val_auroc, abs=1e-3)
    assert r.model.feature_names == list(FEATURE_NAMES) and r.seconds > 0


def test_calibration_keeps_or_improves_brier(trained, data):
    m, Xv, yv = trained.model, data["Xv"], data["yv"]
    raw = 1 / (1 + np.exp(-m.predict_logits(Xv)))
    cal = m.predict_proba(Xv)
    assert trained.calibration[0] > 0  # monotone: ranking unchanged
    assert brier_score_loss(yv, cal) <= brier_score_loss(yv, raw)
    # pos_weight inflates the raw probabilities; calibration brings the mean back to the prevalence.
    assert abs(cal.mean() - yv.mean()) < 0.03 < raw.mean() - yv.mean()


def test_predictions_are_finite_for_missing_and_extreme_inputs(trained):
    m = trained.model
    X = np.full((4, N_FEATURES), np.nan, dtype=np.float32)
    X[1] = 0.0
    X[2, :] = np.inf
    X[3, :] = 1e30
    p = m.predict_proba(X)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    assert p[0] == pytest.approx(p[2])  # inf is treated as missing
    for buf in (m.median, m.mean, m.std):
        assert torch.isfinite(buf).all()
    assert torch.all(m.std > 0)
    with pytest.raises(ValueError, match="shape"):
        m.predict_proba(np.zeros((2, N_FEATURES - 1)))
    out = m(torch.from_numpy(X))
    assert out.shape == (4,) and not torch.isnan(out).any()


def test_fit_is_deterministic_and_seed_dependent(trained, data):
    again = fit(data["train"], data["val"], CFG)
    Xv = data["Xv"]
    assert np.array_equal(again.model.predict_proba(Xv), trained.model.predict_proba(Xv))
    assert [h["val_auroc"] for h in again.history] == [h["val_auroc"] for h in trained.history]
    other = fit(data["train"], data["val"], TrainConfig(**{**CFG.__dict__, "seed": 8, "max_epochs": 1}))
    assert not np.array_equal(other.model.predict_proba(Xv), trained.model.predict_proba(Xv))


def test_save_and_load_reproduce_predictions(trained, data, tmp_path):
    m, Xv = trained.model, data["Xv"]
    ref = m.predict_proba(Xv)
    torch.save(m, tmp_path / "model.pt")
    whole = torch.load(tmp_path / "model.pt", weights_only=False)
    assert np.array_equal(whole.predict_proba(Xv), ref)
    torch.save(m.state_dict(), tmp_path / "state.pt")
    fresh = RiskModel(Preprocessor.load(trained.preprocessor.save(tmp_path / "scaler.pkl")), hidden=CFG.hidden)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert np.array_equal(fresh.predict_proba(Xv), ref)  # calibration and scaler are in the state dict
    assert float(fresh.calib_a) == pytest.approx(trained.calibration[0])


def test_mlflow_pytorch_round_trip_of_the_module_alone(trained, data, tmp_path):
    """The serving path: mlflow.pytorch save/load (torch.export "pt2" format) of the module, local files only."""
    import mlflow.pytorch

    X = data["Xv"][:300].astype(np.float32)
    X[:5] = np.nan  # rows with every feature missing
    ref = trained.model.predict_proba(X)
    # pip_requirements given: skips mlflow's requirement inference (a ~15 s subprocess).
    mlflow.pytorch.save_model(trained.model, str(tmp_path / "m"), input_example=X[:5], pip_requirements=["torch"])
    loaded = mlflow.pytorch.load_model(str(tmp_path / "m"))
    for rows in (slice(0, 1), slice(0, 300)):
        with torch.no_grad():
            got = loaded(torch.from_numpy(X[rows])).numpy()
        np.testing.assert_allclose(got, ref[rows], rtol=0, atol=1e-6)
    assert np.all(np.isfinite(got))


def test_early_stopping_restores_best_weights(data, monkeypatch):
    scripted = iter([0.60, 0.80, 0.70, 0.65, 0.99, 0.99])
    seen: list[np.ndarray] = []

    def fake_auroc(y, scores):
        seen.append(np.array(scores))
        return next(scripted)

    monkeypatch.setattr(training, "roc_auc_score", fake_auroc)
    r = fit(data["train"], data["val"], TrainConfig(**{**CFG.__dict__, "max_epochs": 5, "patience": 2}))
    assert len(r.history) == 4 and r.best_epoch == 2 and r.val_auroc == 0.80
    assert np.allclose(r.model.predict_logits(data["Xv"]), seen[1], atol=1e-6)
    assert not np.allclose(seen[1], seen[3], atol=1e-6)


def test_single_class_splits_raise_a_helpful_error(tmp_path, data):
    X, y = make_data(600, seed=5)
    no_pos = ParquetSplit(write_split(tmp_path / "neg", X, np.zeros_like(y), 1, 600))
    no_neg = ParquetSplit(write_split(tmp_path / "pos", X, np.ones_like(y), 1, 600))
    with pytest.raises(ValueError, match=r"train split has no positive.*longer history.*more\s+patients"):
        fit(no_pos, data["val"], CFG)
    with pytest.raises(ValueError, match=r"validation split has no negative"):
        fit(data["train"], no_neg, CFG)
