"""Training time for N rows (default 1 M) of the feature registry's shape, on the CPU.

Rows are synthetic (a planted logistic signal on a few features, 30 % missing values in
others, 3 % positives), written as Parquet parts and streamed by the same loader,
preprocessor fit, MLP training loop and calibration as `vitalstream train`. A fixed
number of epochs (no early stop) makes runs comparable.

    python bench/train_time.py [--rows 1000000] [--epochs 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.loader import ParquetSplit  # noqa: E402
from model.training import TrainConfig, fit  # noqa: E402
from tables.features.registry import FEATURE_NAMES, N_FEATURES  # noqa: E402


def write_parts(out: Path, rows: int, seed: int, part_rows: int = 100_000) -> list[str]:
    rng = np.random.default_rng(seed)
    w = np.zeros(N_FEATURES)
    w[:8] = rng.normal(0, 1, 8)
    paths = []
    for i, lo in enumerate(range(0, rows, part_rows)):
        n = min(part_rows, rows - lo)
        X = rng.normal(0, 1, (n, N_FEATURES))
        logit = X @ w - 4.2
        X[:, 40:][rng.random((n, N_FEATURES - 40)) < 0.3] = np.nan
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        table = pa.table({**{name: X[:, j] for j, name in enumerate(FEATURE_NAMES)}, "label": y})
        path = out / f"part-{i:04d}.parquet"
        pq.write_table(table, path, row_group_size=16_384)
        paths.append(str(path))
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=TrainConfig.batch_rows)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vs-train-bench-"))
    (tmp / "train").mkdir()
    (tmp / "val").mkdir()
    print(f"# train_time {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    train = ParquetSplit(write_parts(tmp / "train", args.rows, seed=1))
    val = ParquetSplit(write_parts(tmp / "val", max(args.rows // 7, 10_000), seed=2))
    print(f"data: {args.rows:,} train rows x {N_FEATURES} features (+ {len(val):,} val), "
          f"written in {time.perf_counter() - t0:.1f} s")
    config = TrainConfig(max_epochs=args.epochs, patience=args.epochs, threads=args.threads, batch_rows=args.batch_rows)
    result = fit(train, val, config)
    epochs = [h["seconds"] for h in result.history]
    print(f"fit: {result.seconds:.1f} s total for {len(epochs)} epochs "
          f"({np.mean(epochs):.1f} s/epoch, {args.rows / np.mean(epochs):,.0f} rows/s; preprocessor pass, "
          f"validation and calibration included); val AUROC {result.val_auroc:.3f}")
    print(f"config: hidden {config.hidden}, batch {config.batch_rows}, threads {config.threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
