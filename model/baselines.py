"""Baselines the MLP must beat: the NEWS2 total score and a logistic regression on all features."""
from __future__ import annotations

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tables.features.registry import FEATURE_INDEX, N_FEATURES

NEWS2_COLUMN = "news2_total"


def _check(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != N_FEATURES:
        raise ValueError(f"expected X of shape (n, {N_FEATURES}), got {X.shape}")
    return X


def news2_scores(X) -> np.ndarray:
    """The ``news2_total`` feature (0-20 points) as a risk score, NaN (no parameter available) -> 0."""
    return np.nan_to_num(_check(X)[:, FEATURE_INDEX[NEWS2_COLUMN]], nan=0.0, posinf=0.0, neginf=0.0)


class LogisticBaseline:
    """Median imputation + missing indicators -> standardization -> class-balanced logistic regression.

    Non-finite inputs (inf) are treated as missing. Columns entirely missing in train are kept
    (imputed as 0) so the input width never changes.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, seed: int = 0) -> None:
        self.pipeline = Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter, random_state=seed)),
        ])

    @staticmethod
    def _clean(X) -> np.ndarray:
        X = _check(X)
        return np.where(np.isfinite(X), X, np.nan)

    def fit(self, X, y) -> LogisticBaseline:
        y = np.asarray(y).ravel()
        if len(np.unique(y)) < 2:
            raise ValueError("LogisticBaseline needs both positive and negative labels")
        self.pipeline.fit(self._clean(X), y.astype(np.int64))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """P(label = 1), float64 ``(n,)``."""
        return self.pipeline.predict_proba(self._clean(X))[:, 1]
