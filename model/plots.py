"""Evaluation plots (PNG) and permutation feature importance.

Figures are drawn with matplotlib's object API (``matplotlib.figure.Figure`` rendered by the Agg
canvas), so importing this module never touches pyplot or the process-wide backend.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from model.evaluation import expected_calibration_error

Importance = list[tuple[str, float, float]]


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, y: np.ndarray,
                           feature_names: Sequence[str], n_repeats: int = 3, max_rows: int = 5000,
                           seed: int = 0) -> Importance:
    """``[(feature, mean AUROC drop, std), ...]`` sorted by mean drop, largest first.

    Rows are subsampled (uniformly, without replacement) to ``max_rows``. Each feature is
    shuffled ``n_repeats`` times; a column that is constant on the sample (including all-NaN)
    cannot change predictions and gets ``(0, 0)`` without calling ``predict``.
    """
    X = np.asarray(X)
    y = np.asarray(y).ravel()
    if X.ndim != 2 or X.shape[1] != len(feature_names) or len(X) != len(y):
        raise ValueError(f"X {X.shape}, y {y.shape} and {len(feature_names)} feature names do not match")
    rng = np.random.default_rng(seed)
    if len(X) > max_rows:
        idx = np.sort(rng.choice(len(X), size=max_rows, replace=False))
        X, y = X[idx], y[idx]
    if len(np.unique(y)) < 2:
        raise ValueError("permutation importance needs both classes in y (AUROC is undefined otherwise)")
    Xw = np.array(X, copy=True)
    base = roc_auc_score(y, predict(Xw))
    out: Importance = []
    for j, name in enumerate(feature_names):
        col = Xw[:, j].copy()
        nan = np.isnan(col)
        if nan.all() or (not nan.any() and np.all(col == col[0])):
            out.append((name, 0.0, 0.0))
            continue
        drops = []
        for _ in range(n_repeats):
            Xw[:, j] = col[rng.permutation(len(col))]
            drops.append(base - roc_auc_score(y, predict(Xw)))
        Xw[:, j] = col
        out.append((name, float(np.mean(drops)), float(np.std(drops))))
    out.sort(key=lambda t: (-t[1], t[0]))
    return out


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _curves_roc(ax, name: str, y: np.ndarray, s: np.ndarray, **kw) -> None:
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})", **kw)


def _curves_pr(ax, name: str, y: np.ndarray, s: np.ndarray, **kw) -> None:
    prec, rec, _ = precision_recall_curve(y, s)
    ax.plot(rec, prec, label=f"{name} (AUPRC {average_precision_score(y, s):.3f})", **kw)


def save_plots(out_dir: Path, y, p, threshold: float, importance: Importance,
               baseline_scores: dict[str, np.ndarray] | None = None, top: int = 20) -> list[Path]:
    """Write roc.png, pr.png, calibration.png, confusion_matrix.png, feature_importance.png; return their paths.

    ``baseline_scores`` (e.g. ``{"NEWS2": news2_scores(X), "logistic": ...}``) are any monotone risk
    scores for the same rows; they are drawn on the ROC and PR plots. ``y`` must hold both classes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(p) or len(np.unique(y)) < 2:
        raise ValueError("save_plots needs y and p of equal length and both classes in y")
    baselines = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in (baseline_scores or {}).items()}
    for k, v in baselines.items():
        if len(v) != len(y):
            raise ValueError(f"baseline {k!r} has {len(v)} scores for {len(y)} rows")
    paths: list[Path] = []

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    _curves_roc(ax, "model", y, p, lw=2)
    for k, v in baselines.items():
        _curves_roc(ax, k, y, v, lw=1.2)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    paths.append(_save(fig, out_dir / "roc.png"))

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    _curves_pr(ax, "model", y, p, lw=2)
    for k, v in baselines.items():
        _curves_pr(ax, k, y, v, lw=1.2)
    ax.axhline(y.mean(), ls="--", c="grey", lw=0.8, label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right", fontsize=8)
    paths.append(_save(fig, out_dir / "pr.png"))

    fig = Figure(figsize=(5.5, 6))
    ax, axh = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bins = 10
    idx = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    n_b = np.bincount(idx, minlength=bins)
    ok = n_b > 0
    conf = np.bincount(idx, weights=p, minlength=bins)[ok] / n_b[ok]
    acc = np.bincount(idx, weights=y, minlength=bins)[ok] / n_b[ok]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    ax.plot(conf, acc, marker="o", lw=1.5, label=f"model (ECE {expected_calibration_error(y, p, bins):.3f})")
    ax.set(ylabel="observed event rate", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    axh.hist(p, bins=np.linspace(0, 1, 41), color="tab:blue", alpha=0.7)
    axh.set(xlabel="predicted probability", ylabel="rows")
    axh.set_yscale("log")
    paths.append(_save(fig, out_dir / "calibration.png"))

    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot()
    cm = confusion_matrix(y.astype(int), (p >= threshold).astype(int), labels=[0, 1])
    ax.imshow(cm, cmap="Blues")
    total = cm.sum()
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]}\n({cm[i, j] / total:.1%})", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], ["no alert", "alert"])
    ax.set_yticks([0, 1], ["no event", "event"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion matrix at p >= {threshold:.3g}")
    paths.append(_save(fig, out_dir / "confusion_matrix.png"))

    items = list(importance)[:top]
    fig = Figure(figsize=(7, max(2.5, 0.3 * len(items) + 1)))
    ax = fig.add_subplot()
    if items:
        names = [t[0] for t in items][::-1]
        means = [t[1] for t in items][::-1]
        stds = [t[2] for t in items][::-1]
        ax.barh(range(len(items)), means, xerr=stds, color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(items)), names, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no importance computed", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="mean AUROC drop when permuted", title=f"Permutation importance (top {len(items)})")
    paths.append(_save(fig, out_dir / "feature_importance.png"))
    return paths
