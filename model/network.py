"""The adverse-event risk model: preprocessing + MLP + Platt calibration in one ``nn.Module``.

``RiskModel(x)`` maps raw feature vectors (float32 ``(n, N_FEATURES)`` in registry order, NaN =
missing) to the calibrated probability of ``adverse_event_24h``. Everything needed at serving time
is a buffer or parameter of the module, so saving/loading the module alone (``mlflow.pytorch``,
``torch.save``) reproduces predictions:

1. missing indicator ``m = ~isfinite(x)`` (NaN and +-inf count as missing),
2. imputation of missing values with the train median,
3. standardization ``(x - mean) / std`` with the mean/std of the *imputed* train column
   (so the network sees mean 0, std 1 on train), clipped to ``[-clip, clip]``,
4. ``[standardized, m]`` (2 * N_FEATURES inputs) -> MLP -> one logit,
5. Platt calibration ``p = sigmoid(a * logit + b)``; ``a, b`` are fitted on validation.

``Preprocessor`` holds the statistics of steps 2-3; it is fitted by streaming over batches
(``PreprocessorFitter``) and pickled as the ``scaler.pkl`` artifact.
"""
from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tables.features.registry import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES

# A standard deviation below this (constant or entirely missing column) is replaced by 1.0,
# so the column is only centred; it can never produce NaN/inf.
STD_FLOOR = 1e-6
DEFAULT_RESERVOIR_ROWS = 200_000
DEFAULT_CLIP = 10.0


@dataclass
class Preprocessor:
    """Per-feature train statistics (float64 arrays of length ``len(feature_names)``)."""

    medians: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    feature_names: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    feature_version: str = FEATURE_VERSION
    n_rows: int = 0  # train rows the statistics were computed on (informational)

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        self.medians = np.asarray(self.medians, dtype=np.float64)
        self.means = np.asarray(self.means, dtype=np.float64)
        self.stds = np.asarray(self.stds, dtype=np.float64)
        for name in ("medians", "means", "stds"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"Preprocessor.{name} has shape {arr.shape}, expected ({n},)")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Preprocessor.{name} contains NaN/inf")
        if np.any(self.stds <= 0):
            raise ValueError("Preprocessor.stds must be > 0")

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def fit(cls, batches: Iterable[np.ndarray], reservoir_rows: int = DEFAULT_RESERVOIR_ROWS,
            seed: int = 0) -> Preprocessor:
        """Fit from an iterable of ``(b, N_FEATURES)`` arrays (one streaming pass)."""
        fitter = PreprocessorFitter(reservoir_rows=reservoir_rows, seed=seed)
        for X in batches:
            fitter.update(X)
        return fitter.finalize()

    def transform(self, X: np.ndarray, clip: float = DEFAULT_CLIP) -> np.ndarray:
        """numpy version of the module's input transform: ``(n, 2 * n_features)`` float32."""
        X = np.asarray(X, dtype=np.float64)
        missing = ~np.isfinite(X)
        Z = np.where(missing, self.medians, X)
        Z = np.clip((Z - self.means) / self.stds, -clip, clip)
        return np.concatenate([Z, missing.astype(np.float64)], axis=1).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Pickle to ``path`` (the ``scaler.pkl`` artifact); plain numpy/str content only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "medians": self.medians, "means": self.means, "stds": self.stds,
            "feature_names": list(self.feature_names), "feature_version": self.feature_version,
            "n_rows": int(self.n_rows),
        }
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        with open(path, "rb") as f:
            state = pickle.load(f)
        if isinstance(state, Preprocessor):
            return state
        return cls(**state)


class PreprocessorFitter:
    """Streaming fit of a ``Preprocessor``.

    Observed (finite) values: per-feature count/mean/M2, merged batch by batch with Chan's parallel
    update (numerically stable Welford). Medians: per-feature ``nanmedian`` of a uniform reservoir
    sample of up to ``reservoir_rows`` rows (exact when the data has no more rows). At ``finalize``
    the missing entries (all equal to the median) are merged into the moments, so means/stds are
    those of the imputed column. Entirely-missing columns get median 0, mean 0, std 1.
    """

    def __init__(self, n_features: int = N_FEATURES, reservoir_rows: int = DEFAULT_RESERVOIR_ROWS,
                 seed: int = 0, feature_names: Sequence[str] | None = None) -> None:
        if reservoir_rows < 1:
            raise ValueError("reservoir_rows must be >= 1")
        self.feature_names = list(feature_names) if feature_names is not None else list(FEATURE_NAMES)
        if len(self.feature_names) != n_features:
            raise ValueError(f"{len(self.feature_names)} feature names for {n_features} features")
        self.n_features = n_features
        self.reservoir_rows = reservoir_rows
        self._rng = np.random.default_rng(seed)
        self._reservoir = np.empty((0, n_features), dtype=np.float32)
        self._seen = 0  # rows offered to the reservoir
        self._count = np.zeros(n_features, dtype=np.float64)  # finite values per feature
        self._mean = np.zeros(n_features, dtype=np.float64)
        self._m2 = np.zeros(n_features, dtype=np.float64)

    @property
    def n_rows(self) -> int:
        return self._seen

    def update(self, X: np.ndarray) -> None:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a (b, {self.n_features}) batch, got shape {X.shape}")
        if len(X) == 0:
            return
        X64 = X.astype(np.float64, copy=False)
        finite = np.isfinite(X64)
        cnt = finite.sum(axis=0).astype(np.float64)
        Xz = np.where(finite, X64, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            bmean = np.where(cnt > 0, Xz.sum(axis=0) / np.maximum(cnt, 1), 0.0)
        dev = np.where(finite, X64 - bmean, 0.0)
        bm2 = (dev * dev).sum(axis=0)
        self._merge(cnt, bmean, bm2)
        self._reservoir_update(X)

    def _merge(self, cnt: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        tot = self._count + cnt
        safe = np.maximum(tot, 1)
        delta = mean - self._mean
        self._mean = np.where(tot > 0, self._mean + delta * cnt / safe, 0.0)
        self._m2 = self._m2 + m2 + delta * delta * self._count * cnt / safe
        self._count = tot

    def _reservoir_update(self, X: np.ndarray) -> None:
        """Vectorized Algorithm R: row ``i`` (0-based global index) replaces a uniform slot w.p. k/(i+1)."""
        X = X.astype(np.float32, copy=False)
        k = self.reservoir_rows
        start = 0
        have = len(self._reservoir)
        if have < k:
            take = min(k - have, len(X))
            self._reservoir = np.concatenate([self._reservoir, X[:take]], axis=0)
            start = take
        if start < len(X):
            idx = self._seen + np.arange(start, len(X))  # global indices of the remaining rows
            j = (self._rng.random(len(idx)) * (idx + 1)).astype(np.int64)
            keep = j < k
            # Later rows win on a collision, as in the sequential algorithm.
            self._reservoir[j[keep]] = X[start:][keep]
        self._seen += len(X)

    def finalize(self) -> Preprocessor:
        with warnings.catch_warnings():  # entirely-missing columns: "All-NaN slice encountered"
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = np.nanmedian(self._reservoir.astype(np.float64), axis=0) if len(self._reservoir) else \
                np.full(self.n_features, np.nan)
        medians = np.where(np.isfinite(medians), medians, 0.0)
        n = float(self._seen)
        # The missing entries of each column are (n - count) copies of the median: mean = median, M2 = 0.
        miss = np.maximum(n - self._count, 0.0)
        tot = self._count + miss
        safe = np.maximum(tot, 1)
        delta = medians - self._mean
        mean = np.where(tot > 0, self._mean + delta * miss / safe, medians)
        m2 = self._m2 + delta * delta * self._count * miss / safe
        with np.errstate(all="ignore"):
            std = np.sqrt(np.where(tot > 1, m2 / np.maximum(tot - 1, 1), 0.0))
        std = np.where(np.isfinite(std) & (std >= STD_FLOOR), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        return Preprocessor(medians=medians, means=mean, stds=std, feature_names=list(self.feature_names),
                            feature_version=FEATURE_VERSION, n_rows=int(self._seen))


class RiskModel(nn.Module):
    """Raw features (NaN = missing) -> calibrated P(adverse_event_24h); see the module docstring."""

    def __init__(self, preprocessor: Preprocessor, hidden: Sequence[int] = (128, 64), dropout: float = 0.1,
                 clip: float = DEFAULT_CLIP) -> None:
        super().__init__()
        n = preprocessor.n_features
        self.feature_names: list[str] = list(preprocessor.feature_names)
        self.feature_version: str = preprocessor.feature_version
        self.hidden: tuple[int, ...] = tuple(int(h) for h in hidden)
        self.dropout: float = float(dropout)
        self.register_buffer("median", torch.as_tensor(preprocessor.medians, dtype=torch.float32).clone())
        self.register_buffer("mean", torch.as_tensor(preprocessor.means, dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(preprocessor.stds, dtype=torch.float32).clone())
        self.register_buffer("clip", torch.tensor(float(clip), dtype=torch.float32))
        # Platt calibration p = sigmoid(a * logit + b); identity until fit_calibration/set_calibration.
        self.register_buffer("calib_a", torch.tensor(1.0, dtype=torch.float32))
        self.register_buffer("calib_b", torch.tensor(0.0, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = 2 * n
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(self.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def transform(self, x: Tensor) -> Tensor:
        """Raw ``(n, F)`` -> ``(n, 2F)`` network input: clipped standardized imputed values, then missing flags."""
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected input of shape (n, {self.n_features}), got {tuple(x.shape)}")
        x = x.to(self.median.dtype)
        missing = ~torch.isfinite(x)
        z = torch.where(missing, self.median, x)
        z = ((z - self.mean) / self.std).clamp(-self.clip, self.clip)
        return torch.cat([z, missing.to(z.dtype)], dim=1)

    def logits(self, x: Tensor) -> Tensor:
        """Uncalibrated logit ``(n,)``."""
        return self.mlp(self.transform(x)).squeeze(-1)

    def calibrate(self, logit: Tensor) -> Tensor:
        return torch.sigmoid(self.calib_a * logit + self.calib_b)

    def forward(self, x: Tensor) -> Tensor:
        """Calibrated probability ``(n,)``."""
        return self.calibrate(self.logits(x))

    def set_calibration(self, a: float, b: float) -> None:
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"calibration parameters must be finite, got a={a}, b={b}")
        self.calib_a.fill_(float(a))
        self.calib_b.fill_(float(b))

    def fit_calibration(self, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Fit the Platt parameters on (validation) data and store them; returns ``(a, b)``."""
        a, b = fit_platt(self.predict_logits(X), y)
        self.set_calibration(a, b)
        return a, b

    def _batched(self, X: np.ndarray, fn, batch_rows: int) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected X of shape (n, {self.n_features}), got {X.shape}")
        was_training = self.training
        self.eval()
        out = np.empty(len(X), dtype=np.float64)
        try:
            with torch.no_grad():
                for i in range(0, len(X), batch_rows):
                    xb = torch.from_numpy(np.ascontiguousarray(X[i:i + batch_rows], dtype=np.float32))
                    out[i:i + len(xb)] = fn(xb).double().numpy()
        finally:
            self.train(was_training)
        return out

    def predict_proba(self, X: np.ndarray, batch_rows: int = 8192) -> np.ndarray:
        """Calibrated probabilities, float64 ``(n,)``; no grad, eval mode (the previous mode is restored)."""
        return self._batched(X, self.forward, batch_rows)

    def predict_logits(self, X: np.ndarray, batch_rows: int = 8192) -> np.ndarray:
        """Uncalibrated logits, float64 ``(n,)``."""
        return self._batched(X, self.logits, batch_rows)


def fit_platt(logits: np.ndarray, y: np.ndarray, max_iter: int = 200) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` minimizing the log loss of ``sigmoid(a * logit + b)`` against ``y``.

    Unregularized two-parameter logistic regression by Newton's method (deterministic); a tiny ridge
    keeps the Hessian invertible when the logits are constant. Needs both classes in ``y``.
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    t = np.asarray(y, dtype=np.float64).ravel()
    if z.shape != t.shape or len(z) == 0:
        raise ValueError("logits and y must be non-empty and of equal length")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN/inf")
    if t.min() == t.max():
        raise ValueError("Platt calibration needs both positive and negative labels")
    A = np.stack([z, np.ones_like(z)], axis=1)
    prior = t.mean()
    w = np.array([0.0, math.log(prior / (1 - prior))])  # start: constant prevalence model

    def loss(w: np.ndarray) -> float:
        s = A @ w
        return float(np.mean(np.logaddexp(0.0, s) - t * s))

    cur = loss(w)
    for _ in range(max_iter):
        s = A @ w
        p = 1.0 / (1.0 + np.exp(-s))
        g = A.T @ (p - t) / len(t)
        H = (A * (p * (1 - p))[:, None]).T @ A / len(t) + 1e-10 * np.eye(2)
        step = np.linalg.solve(H, g)
        # Backtracking line search keeps Newton monotone on badly scaled logits.
        lr = 1.0
        while lr > 1e-8:
            cand = w - lr * step
            new = loss(cand)
            if new <= cur:
                break
            lr *= 0.5
        else:
            break
        converged = abs(cur - new) < 1e-12 and np.max(np.abs(lr * step)) < 1e-9
        w, cur = cand, new
        if converged:
            break
    return float(w[0]), float(w[1])
