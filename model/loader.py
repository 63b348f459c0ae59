"""Streaming Parquet -> numpy/PyTorch batches for training sets larger than memory.

A split is a list of Parquet files with the ``FEATURE_NAMES`` columns (float64, NaN/null =
missing), ``label`` (int8) and other columns that are ignored unless asked for. Only the footers are
read up front; rows are read with ``ParquetFile.iter_batches`` one row group at a time, so memory is
bounded by the shuffle buffer (``buffer_rows`` + one read chunk), never by the split.

Shuffling (``shuffle=True``) = random file order + random row-group order within each file + a
bounded shuffle buffer: when the buffer holds ``buffer_rows`` rows it is permuted, about half of it
is emitted as batches and the rest stays to be mixed with the next rows; at the end the remainder is
permuted and emitted. Each row is emitted exactly once per pass; the order depends only on ``seed``.
Every batch has exactly ``batch_rows`` rows except possibly the last.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tables.features.registry import FEATURE_NAMES, N_FEATURES

LABEL = "label"
DEFAULT_BUFFER_ROWS = 65_536
READ_CHUNK_ROWS = 8_192


class _RowCount(int):
    """``split.num_rows`` is an int that can also be called: ``split.num_rows == split.num_rows()``."""

    def __call__(self) -> int:
        return int(self)


def _resolve(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, path
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def _column_to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow column -> numpy; float/int nulls become NaN (ints with nulls are upcast to float64)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
                           or pa.types.is_boolean(col.type)):
        col = col.cast(pa.float64())
    return col.to_numpy(zero_copy_only=False)


class ParquetSplit:
    """A train/val/test split stored as Parquet files (local, or any ``pyarrow.fs.FileSystem`` such as S3).

    ``paths`` are files; a path that is a directory is expanded to the ``*.parquet`` files under it
    (recursively, sorted). Without ``filesystem``, a path with a URI scheme (``s3://...``) is resolved
    by ``pyarrow.fs.FileSystem.from_uri``; otherwise it is local.
    """

    def __init__(self, paths: Sequence[str], filesystem: pafs.FileSystem | None = None) -> None:
        if isinstance(paths, (str, bytes)):
            paths = [paths]
        self.filesystem = filesystem
        self._files: list[tuple[pafs.FileSystem, str]] = []
        for p in paths:
            fs, path = _resolve(str(p), filesystem)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"Parquet path not found: {p}")
            if info.type == pafs.FileType.Directory:
                found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                files = sorted(i.path for i in found if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
                self._files += [(fs, f) for f in files]
            else:
                self._files.append((fs, path))
        self.paths: list[str] = [f for _, f in self._files]
        self._row_groups: list[list[int]] = []  # rows per row group, per file
        self._schema_names: set[str] | None = None
        for fs, path in self._files:
            with fs.open_input_file(path) as fh:
                md = pq.ParquetFile(fh).metadata
                names = set(md.schema.names)
                self._row_groups.append([md.row_group(i).num_rows for i in range(md.num_row_groups)])
            missing = [c for c in (*FEATURE_NAMES, LABEL) if c not in names]
            if missing:
                shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
                raise ValueError(f"{path} lacks required column(s): {shown}")
            self._schema_names = names if self._schema_names is None else self._schema_names & names
        self._num_rows = _RowCount(sum(sum(rg) for rg in self._row_groups))

    def __repr__(self) -> str:
        return f"ParquetSplit({len(self.paths)} files, {int(self._num_rows)} rows)"

    def __len__(self) -> int:
        return int(self._num_rows)

    @property
    def num_rows(self) -> _RowCount:
        """Total rows (from the footers); usable as ``split.num_rows`` or ``split.num_rows()``."""
        return self._num_rows

    @property
    def columns(self) -> set[str]:
        """Columns present in every file."""
        return set(self._schema_names or ())

    # -- reading -------------------------------------------------------------------------------

    def _units(self, shuffle: bool, rng: np.random.Generator, shard: tuple[int, int] | None
               ) -> list[tuple[int, int]]:
        """(file, row group) in reading order; with ``shard=(k, n)`` only every n-th unit from k."""
        order = rng.permutation(len(self._files)) if shuffle else np.arange(len(self._files))
        units = []
        for fi in order:
            n_rg = len(self._row_groups[fi])
            rgs = rng.permutation(n_rg) if shuffle else np.arange(n_rg)
            units += [(int(fi), int(r)) for r in rgs if self._row_groups[fi][r] > 0]
        if shard is not None:
            k, n = shard
            units = units[k::n]
        return units

    def _iter_chunks(self, units: list[tuple[int, int]], columns: list[str], chunk_rows: int
                     ) -> Iterator[pa.RecordBatch]:
        i = 0
        while i < len(units):
            fi = units[i][0]
            fs, path = self._files[fi]
            with fs.open_input_file(path) as fh:
                pf = pq.ParquetFile(fh)
                # Consecutive units of one file share the open handle.
                while i < len(units) and units[i][0] == fi:
                    yield from pf.iter_batches(batch_size=chunk_rows, row_groups=[units[i][1]], columns=columns,
                                               use_threads=False)
                    i += 1

    @staticmethod
    def _decode(rb: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        pos = {name: i for i, name in enumerate(rb.schema.names)}
        X = np.empty((rb.num_rows, N_FEATURES), dtype=np.float32)
        for j, name in enumerate(FEATURE_NAMES):
            X[:, j] = _column_to_numpy(rb.column(pos[name]))
        lab = rb.column(pos[LABEL])
        if lab.null_count:
            raise ValueError("the label column contains nulls")
        return X, lab.to_numpy(zero_copy_only=False).astype(np.float32)

    def iter_batches(self, batch_rows: int, shuffle: bool = False, seed: int = 0, *,
                     buffer_rows: int = DEFAULT_BUFFER_ROWS, shard: tuple[int, int] | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(X float32 (b, N_FEATURES), y float32 (b,))`` with ``b == batch_rows`` except the last.

        Yielded arrays are fresh copies (safe to keep). Without shuffling, rows come in file order.
        """
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        rng = np.random.default_rng(seed)
        capacity = max(int(buffer_rows), 2 * batch_rows) if shuffle else batch_rows
        chunk = min(READ_CHUNK_ROWS, max(batch_rows, 1)) if not shuffle else min(READ_CHUNK_ROWS, capacity)
        bx = np.empty((capacity + chunk, N_FEATURES), dtype=np.float32)
        by = np.empty(capacity + chunk, dtype=np.float32)
        fill = 0
        columns = [*FEATURE_NAMES, LABEL]
        for rb in self._iter_chunks(self._units(shuffle, rng, shard), columns, chunk):
            X, y = self._decode(rb)
            bx[fill:fill + len(X)] = X
            by[fill:fill + len(y)] = y
            fill += len(X)
            if fill < capacity:
                continue
            if shuffle:
                perm = rng.permutation(fill)
                bx[:fill] = bx[perm]
                by[:fill] = by[perm]
                # Emit about half the buffer (whole batches), keep the rest to mix with later rows.
                n_emit = max(((fill - capacity // 2) // batch_rows) * batch_rows, batch_rows)
            else:
                n_emit = (fill // batch_rows) * batch_rows
            for s in range(0, n_emit, batch_rows):
                yield bx[s:s + batch_rows].copy(), by[s:s + batch_rows].copy()
            rest = fill - n_emit
            bx[:rest] = bx[n_emit:fill]
            by[:rest] = by[n_emit:fill]
            fill = rest
        if fill:
            if shuffle:
                perm = rng.permutation(fill)
                bx[:fill] = bx[perm]
                by[:fill] = by[perm]
            for s in range(0, fill, batch_rows):
                e = min(s + batch_rows, fill)
                yield bx[s:e].copy(), by[s:e].copy()

    def to_numpy(self, columns: Sequence[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Load the whole split (for small val/test splits): ``X float32, y float32, {column: array}``.

        Extra columns come back as numpy arrays (strings as object arrays, timestamps as
        ``datetime64``, integers as int64, or float64 with NaN when they contain nulls).
        """
        extra = list(columns or [])
        absent = [c for c in extra if c not in self.columns]
        if absent:
            raise ValueError(f"column(s) not in every file of the split: {absent}")
        want = [*FEATURE_NAMES, LABEL, *[c for c in extra if c not in (*FEATURE_NAMES, LABEL)]]
        n = int(self._num_rows)
        X = np.empty((n, N_FEATURES), dtype=np.float32)
        y = np.empty(n, dtype=np.float32)
        parts: dict[str, list[np.ndarray]] = {c: [] for c in extra}
        pos = 0
        for rb in self._iter_chunks(self._units(False, np.random.default_rng(0), None), want, 65_536):
            Xb, yb = self._decode(rb)
            X[pos:pos + len(Xb)] = Xb
            y[pos:pos + len(yb)] = yb
            for c in extra:
                parts[c].append(_column_to_numpy(rb.column(rb.schema.get_field_index(c))))
            pos += len(Xb)
        if pos != n:  # pragma: no cover - footer/row mismatch would be a corrupt file
            raise RuntimeError(f"read {pos} rows, footers say {n}")
        out = {c: (np.concatenate(v) if v else np.empty(0)) for c, v in parts.items()}
        return X, y, out

    def label_counts(self) -> tuple[int, int]:
        """``(n_negative, n_positive)`` reading only the label column."""
        pos = neg = 0
        for rb in self._iter_chunks(self._units(False, np.random.default_rng(0), None), [LABEL], 65_536):
            lab = rb.column(0)
            if lab.null_count:
                raise ValueError("the label column contains nulls")
            v = lab.to_numpy(zero_copy_only=False)
            p = int(np.count_nonzero(v == 1))
            pos += p
            neg += len(v) - p
        return neg, pos

    def sample(self, max_rows: int, seed: int = 0, batch_rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Uniform random sample (reservoir) of at most ``max_rows`` rows, in one streaming pass."""
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        rng = np.random.default_rng(seed)
        rx = np.empty((0, N_FEATURES), dtype=np.float32)
        ry = np.empty(0, dtype=np.float32)
        seen = 0
        for X, y in self.iter_batches(batch_rows, shuffle=False, seed=seed):
            start = 0
            if len(rx) < max_rows:
                take = min(max_rows - len(rx), len(X))
                rx = np.concatenate([rx, X[:take]])
                ry = np.concatenate([ry, y[:take]])
                start = take
            if start < len(X):
                idx = seen + np.arange(start, len(X))
                j = (rng.random(len(idx)) * (idx + 1)).astype(np.int64)
                keep = j < max_rows
                rx[j[keep]] = X[start:][keep]
                ry[j[keep]] = y[start:][keep]
            seen += len(X)
        return rx, ry


class ParquetIterable(IterableDataset):
    """``IterableDataset`` of pre-made ``(X, y)`` float32 tensor batches from a ``ParquetSplit``.

    With several DataLoader workers, the (file, row group) units are split between them
    (round-robin), so each row is still read once per epoch.
    """

    def __init__(self, split: ParquetSplit, batch_rows: int, shuffle: bool, seed: int,
                 buffer_rows: int = DEFAULT_BUFFER_ROWS) -> None:
        super().__init__()
        self.split = split
        self.batch_rows = batch_rows
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_rows = buffer_rows

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        shard = None if info is None or info.num_workers <= 1 else (info.id, info.num_workers)
        for X, y in self.split.iter_batches(self.batch_rows, self.shuffle, self.seed,
                                            buffer_rows=self.buffer_rows, shard=shard):
            yield torch.from_numpy(X), torch.from_numpy(y)


def make_dataloader(split: ParquetSplit, batch_rows: int, shuffle: bool, seed: int, *,
                    buffer_rows: int = DEFAULT_BUFFER_ROWS, num_workers: int = 0) -> DataLoader:
    """DataLoader over pre-made batches (``batch_size=None``). Use a new ``seed`` per epoch for a new order."""
    return DataLoader(ParquetIterable(split, batch_rows, shuffle, seed, buffer_rows),
                      batch_size=None, num_workers=num_workers)
