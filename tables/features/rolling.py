"""Exact, incremental rolling statistics of the vital signs over (t - w, t].

Why integers: running float sums with eviction drift, and the variance
``S2 - S1^2/n`` cancels catastrophically when a window's spread is small next
to the values seen before it. Each value is mapped to the exact integer
``V = value * 2**52`` (exact for every |value| >= 1, i.e. every vital sign) and
times to integer ms relative to a per-patient anchor, so the running sums
(n, sum V, sum V^2, sum T, sum T^2, sum T*V) are exact Python ints: adding and
evicting never accumulates error and the outputs are single correctly-rounded
divisions. The anchor is moved forward (an exact algebraic shift of the sums)
only to keep the integers short. Min/max come from monotonic deques.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from math import nan, sqrt
from typing import Optional

from streams.vocab import VITAL_SIGNALS

from .registry import HOUR_MS, WINDOWS, rolling_base

SCALE_BITS = 52
_SCALE = float(1 << SCALE_BITS)
_INV1 = 2.0**-SCALE_BITS
_INV2 = 2.0 ** (-2 * SCALE_BITS)
WINDOW_MS: tuple[int, ...] = tuple(ms for _, ms in WINDOWS)
N_SIGNALS = len(VITAL_SIGNALS)
REANCHOR_MS = 48 * HOUR_MS
_COMPACT_ROWS = 512  # drop dead rows in batches: `del rows[:k]` is a memmove

# In-memory vitals row: (ts_ms, source, *VITAL_SIGNALS values, consciousness, on_oxygen).
Row = tuple
ROW_VALUES = 2
ROW_CONS = ROW_VALUES + N_SIGNALS
ROW_O2 = ROW_CONS + 1


def to_fixed(value: float) -> int:
    """Exact integer image of a float (truncates below 2**-52 only for |value| < 1)."""
    return int(value * _SCALE)


class WindowStats:
    """Exact moments and min/max deques of one signal over one window."""

    __slots__ = ("n", "s1", "s2", "st", "stt", "stv", "qmax", "qmin", "dirty", "base")

    def __init__(self, base: int) -> None:
        self.n = self.s1 = self.s2 = self.st = self.stt = self.stv = 0
        self.qmax: deque[tuple[int, float]] = deque()  # values strictly decreasing
        self.qmin: deque[tuple[int, float]] = deque()  # values strictly increasing
        self.dirty = True
        self.base = base  # vector position of the `mean` stat

    def stats(self) -> tuple[float, float, float, float, float, float]:
        """(mean, std, min, max, trend per hour, count), NaN where undefined."""
        n = self.n
        if n == 0:
            return (nan, nan, nan, nan, nan, 0.0)
        s1 = self.s1
        mean = (s1 / n) * _INV1
        if n == 1:
            return (mean, nan, self.qmin[0][1], self.qmax[0][1], nan, 1.0)
        std = sqrt((n * self.s2 - s1 * s1) / (n * (n - 1)) * _INV2)
        st = self.st
        den = n * self.stt - st * st  # 0 exactly iff all times are equal
        trend = ((n * self.stv - st * s1) * HOUR_MS) / den * _INV1 if den else nan
        return (mean, std, self.qmin[0][1], self.qmax[0][1], trend, float(n))

    def shift(self, d: int) -> None:
        """Re-express the time sums for T' = T - d (exact)."""
        n, st = self.n, self.st
        self.stt += n * d * d - 2 * d * st
        self.stv -= d * self.s1
        self.st = st - n * d


def _insert_sorted(q: deque, item: tuple[int, float], is_max: bool) -> None:
    """Insert an out-of-order observation into a monotonic deque (rare path)."""
    ts, v = item
    items = list(q)
    i = len(items)
    while i and items[i - 1][0] > ts:  # equal times count as earlier: arrival order
        i -= 1
    after = items[i:]
    # items[i] is the maximum (minimum) of everything after the new item.
    if after and (after[0][1] >= v if is_max else after[0][1] <= v):
        return
    before = items[:i]
    while before and (before[-1][1] <= v if is_max else before[-1][1] >= v):
        before.pop()
    q.clear()
    q.extend(before)
    q.append(item)
    q.extend(after)


class VitalsWindows:
    """A patient's retained vitals rows, sorted by (ts, arrival), and their window stats.

    The caller advances the evaluation time ``t`` (the patient's latest event
    time) with :meth:`advance` before inserting a row; rows may be inserted
    behind ``t`` (late events), they land at their sorted position.
    """

    __slots__ = ("t", "anchor", "keep_ms", "rows", "rts", "wstart", "accs", "last")

    def __init__(self, t: int, keep_ms: int) -> None:
        self.t = t
        self.anchor = t
        self.keep_ms = keep_ms  # rows this recent are kept for de-duplication even outside the windows
        self.rows: list[Row] = []
        self.rts: list[int] = []
        self.wstart = [0] * len(WINDOW_MS)  # first row index inside each window
        self.accs: tuple[tuple[WindowStats, ...], ...] = tuple(
            tuple(WindowStats(rolling_base(sig, win)) for win, _ in WINDOWS) for sig in VITAL_SIGNALS
        )
        # (ts, value) of the last observation per signal, then consciousness, then on_oxygen.
        self.last: list[Optional[tuple[int, object]]] = [None] * (N_SIGNALS + 2)

    # -- queries -------------------------------------------------------------------
    def is_duplicate(self, ts: int, source: str) -> bool:
        rts = self.rts
        if not rts or ts > rts[-1]:
            return False
        rows = self.rows
        i, n = bisect_left(rts, ts), len(rts)
        while i < n and rts[i] == ts:
            if rows[i][1] == source:
                return True
            i += 1
        return False

    def write_rolling(self, vec: list[float]) -> None:
        """Refresh the rolling stats of every window whose content changed."""
        for per_sig in self.accs:
            for a in per_sig:
                if a.dirty:
                    b = a.base
                    vec[b : b + 6] = a.stats()
                    a.dirty = False

    # -- updates ---------------------------------------------------------------------
    def advance(self, t: int) -> None:
        """Move the evaluation time forward to ``t``, evicting rows that left each window."""
        if t <= self.t:
            return
        self.t = t
        rows, rts, accs, wstart = self.rows, self.rts, self.accs, self.wstart
        nrows = len(rts)
        anchor = self.anchor
        for wi, width in enumerate(WINDOW_MS):
            cut = t - width
            i = wstart[wi]
            if i >= nrows or rts[i] > cut:
                continue
            while i < nrows and rts[i] <= cut:
                row = rows[i]
                T = row[0] - anchor
                TT = T * T
                for si in range(N_SIGNALS):
                    v = row[ROW_VALUES + si]
                    if v is None:
                        continue
                    V = int(v * _SCALE)
                    a = accs[si][wi]
                    a.n -= 1
                    a.s1 -= V
                    a.s2 -= V * V
                    a.st -= T
                    a.stt -= TT
                    a.stv -= T * V
                    a.dirty = True
                i += 1
            wstart[wi] = i
            for per_sig in accs:
                a = per_sig[wi]
                q = a.qmax
                while q and q[0][0] <= cut:
                    q.popleft()
                q = a.qmin
                while q and q[0][0] <= cut:
                    q.popleft()
        if wstart[-1] >= _COMPACT_ROWS:
            self._compact()
        if t - anchor > REANCHOR_MS:
            d = t - anchor
            for per_sig in accs:
                for a in per_sig:
                    a.shift(d)
            self.anchor = t

    def _compact(self) -> None:
        # Rows before the widest window are dead unless still inside the lateness horizon.
        k = min(self.wstart[-1], bisect_left(self.rts, self.t - self.keep_ms))
        if k <= 0:
            return
        del self.rows[:k]
        del self.rts[:k]
        self.wstart = [s - k for s in self.wstart]

    def insert(self, row: Row) -> None:
        """Add one accepted row (``row[0] <= t``) to the rows, windows and latest values."""
        ts = row[0]
        rts, rows = self.rts, self.rows
        appended = not rts or ts >= rts[-1]
        if appended:
            rts.append(ts)
            rows.append(row)
        else:
            p = bisect_right(rts, ts)
            rts.insert(p, ts)
            rows.insert(p, row)
        t, wstart = self.t, self.wstart
        inside = []
        for wi, width in enumerate(WINDOW_MS):
            if ts > t - width:
                inside.append(wi)
            else:  # the row sits before this window's start, which shifts by one
                wstart[wi] += 1
        last = self.last
        T = ts - self.anchor
        TT = T * T
        item_v: float
        for si in range(N_SIGNALS):
            v = row[ROW_VALUES + si]
            if v is None:
                continue
            prev = last[si]
            if prev is None or ts >= prev[0]:
                last[si] = (ts, v)
            if not inside:
                continue
            V = int(v * _SCALE)
            VV = V * V
            TV = T * V
            item = (ts, v)
            for wi in inside:
                a = self.accs[si][wi]
                a.n += 1
                a.s1 += V
                a.s2 += VV
                a.st += T
                a.stt += TT
                a.stv += TV
                a.dirty = True
                qx, qn = a.qmax, a.qmin
                if not qx or ts >= qx[-1][0]:
                    while qx and qx[-1][1] <= v:
                        qx.pop()
                    qx.append(item)
                else:
                    _insert_sorted(qx, item, True)
                if not qn or ts >= qn[-1][0]:
                    while qn and qn[-1][1] >= v:
                        qn.pop()
                    qn.append(item)
                else:
                    _insert_sorted(qn, item, False)
        for k in (ROW_CONS, ROW_O2):
            v = row[k]
            if v is not None:
                prev = last[k - ROW_VALUES]
                if prev is None or ts >= prev[0]:
                    last[k - ROW_VALUES] = (ts, v)
