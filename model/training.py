"""Fit loop: streaming preprocessor fit, MLP training with early stopping on val AUROC, Platt calibration.

``fit(train, val, config)``:

1. one streaming pass over ``train`` fits the ``Preprocessor`` (moments + median reservoir) and
   counts the labels (``pos_weight = n_neg / n_pos``);
2. ``val`` is loaded whole (validation splits are small) and must hold both classes;
3. each epoch streams ``train`` in a new shuffled order (seed ``config.seed + epoch``), minimizes
   ``BCEWithLogits(pos_weight)`` with AdamW, then scores val AUROC; training stops after
   ``patience`` epochs without a strictly better AUROC and the best weights are restored;
4. Platt calibration ``(a, b)`` is fitted on the val logits.

Runs are deterministic for a fixed seed and thread count (seeds for python/numpy/torch, torch
deterministic algorithms; global torch settings are restored afterwards).
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from model.loader import ParquetSplit, make_dataloader
from model.network import DEFAULT_RESERVOIR_ROWS, Preprocessor, PreprocessorFitter, RiskModel, fit_platt


@dataclass
class TrainConfig:
    # Strong regularisation: rows of one patient are highly correlated, so the effective sample is the
    # number of adverse events, not of rows (tuned on simulated histories; docs/training.md).
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 5e-2
    batch_rows: int = 512
    max_epochs: int = 20
    patience: int = 3
    seed: int = 42
    threads: int = 1  # 2 threads were ~10x slower than 1 on 2 busy cores, with identical results


@dataclass
class TrainResult:
    model: RiskModel
    preprocessor: Preprocessor
    val_auroc: float
    best_epoch: int  # 1-based epoch whose weights were kept
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, val_auroc, val_loss, seconds
    seconds: float = 0.0
    calibration: tuple[float, float] = (1.0, 0.0)  # Platt (a, b) fitted on val
    pos_weight: float = 1.0
    n_train: int = 0
    n_val: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def _torch_settings(threads: int, deterministic: bool = True) -> Iterator[None]:
    """Set torch threads/determinism for the fit and restore the previous global settings."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.set_num_threads(max(1, int(threads)))
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _check_classes(name: str, n_neg: int, n_pos: int) -> None:
    if n_neg + n_pos == 0:
        raise ValueError(f"the {name} split is empty: build the training set from more patients or a longer history")
    if n_pos == 0 or n_neg == 0:
        missing = "positive (adverse_event_24h = 1)" if n_pos == 0 else "negative"
        raise ValueError(
            f"the {name} split has no {missing} rows ({n_pos} positive, {n_neg} negative), so AUROC is "
            f"undefined and the model cannot be trained/validated: replay a longer history or include more "
            f"patients (more adverse events) so that every split contains both classes"
        )


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def fit_preprocessor(train: ParquetSplit, batch_rows: int = 65_536, reservoir_rows: int = DEFAULT_RESERVOIR_ROWS,
                     seed: int = 0) -> tuple[Preprocessor, int, int]:
    """One streaming pass: ``(preprocessor, n_neg, n_pos)``."""
    fitter = PreprocessorFitter(reservoir_rows=reservoir_rows, seed=seed)
    n_pos = n_rows = 0
    for X, y in train.iter_batches(batch_rows, shuffle=False, seed=seed):
        fitter.update(X)
        n_pos += int(np.count_nonzero(y == 1))
        n_rows += len(y)
    return fitter.finalize(), n_rows - n_pos, n_pos


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def fit(train: ParquetSplit, val: ParquetSplit, config: TrainConfig | None = None,
        progress: bool = False) -> TrainResult:
    """Train a ``RiskModel`` on ``train``, early-stop and calibrate on ``val`` (see the module docstring)."""
    config = config or TrainConfig()
    if config.max_epochs < 1 or config.patience < 1 or config.batch_rows < 1:
        raise ValueError("max_epochs, patience and batch_rows must be >= 1")
    t0 = time.perf_counter()
    with _torch_settings(config.threads):
        seed_everything(config.seed)
        pre, n_neg, n_pos = fit_preprocessor(train, seed=config.seed)
        _check_classes("train", n_neg, n_pos)
        Xv, yv, _ = val.to_numpy()
        n_vpos = int(np.count_nonzero(yv == 1))
        _check_classes("validation", len(yv) - n_vpos, n_vpos)

        seed_everything(config.seed)  # the weight init does not depend on what the data pass consumed
        model = RiskModel(pre, hidden=config.hidden, dropout=config.dropout)
        pos_weight = n_neg / n_pos
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float32))
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        history: list[dict] = []
        best_auroc, best_epoch, best_state, stale = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
        n_batches = math.ceil(int(train.num_rows) / config.batch_rows)
        with _progress(progress) as bar:
            task = bar.add_task("training", total=n_batches) if bar else None
            for epoch in range(1, config.max_epochs + 1):
                te = time.perf_counter()
                if bar:
                    bar.reset(task, total=n_batches, description=f"epoch {epoch}/{config.max_epochs}")
                model.train()
                total, seen = 0.0, 0
                for xb, yb in make_dataloader(train, config.batch_rows, shuffle=True, seed=config.seed + epoch):
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model.logits(xb), yb)
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(yb)
                    seen += len(yb)
                    if bar:
                        bar.advance(task)
                val_logits = model.predict_logits(Xv)
                auroc = float(roc_auc_score(yv, val_logits))
                row = {
                    "epoch": epoch,
                    "train_loss": total / max(seen, 1),  # pos-weighted BCE
                    "val_auroc": auroc,
                    "val_loss": _bce(val_logits, yv),  # unweighted, uncalibrated BCE
                    "seconds": time.perf_counter() - te,
                }
                history.append(row)
                improved = auroc > best_auroc
                if improved:
                    best_auroc, best_epoch, stale = auroc, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
                if bar:
                    bar.console.log(f"epoch {epoch}: train_loss={row['train_loss']:.4f} "
                                    f"val_auroc={auroc:.4f}{' *' if improved else ''}")
                if stale >= config.patience:
                    break

        model.load_state_dict(best_state)
        model.eval()
        a, b = fit_platt(model.predict_logits(Xv), yv)
        model.set_calibration(a, b)
    return TrainResult(
        model=model, preprocessor=pre, val_auroc=best_auroc, best_epoch=best_epoch, history=history,
        seconds=time.perf_counter() - t0, calibration=(a, b), pos_weight=pos_weight,
        n_train=int(train.num_rows), n_val=len(yv),
    )
