"""Exact, incremental rolling statistics of the vital signs over (t - w, t].

Why integers: running float sums with eviction drift, and ``S2 - S1^2/n``
cancels catastrophically when a window's spread is small next to the values
that passed through it before. Here every value is mapped to an exact integer
``V = value * D`` (``D = 10**k`` with the smallest k <= 4 that round-trips the
value, which covers what devices report; otherwise ``D = 2**52``, exact for
every |value| >= 1) and times to integer ms relative to a per-patient anchor.
The running sums (n, sum V, sum V^2, sum T, sum T^2, sum T*V) are then exact
Python ints: adding and evicting never accumulates error, the variance and
slope numerators are exact, and only the final division rounds. Small decimal
scales keep the integers short (fast); a signal's scale only ever grows and a
change recomputes that signal's sums from the retained rows. The anchor moves
forward by an exact algebraic shift of the sums, only to keep the integers short.

Min/max: one pair of monotonic deques per signal over the widest window; the
narrower windows' extremes are the first deque entries inside them (a suffix
maximum of the 24 h window is also the maximum of any suffix window).

Divisions of the exact integers go through ``operator.truediv`` (``_div``), CPython's int division,
which rounds the exact quotient once. The module is compiled with mypyc (setup.py), whose ``int / int``
converts each operand to a double first and so rounds twice once they pass 2**53.

Hot path (:meth:`VitalsWindows.push`): a current vitals row evicts, adds and
recomputes each (signal, window) in one pass over local variables.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from math import nan, sqrt
from operator import truediv as _div  # int / int, correctly rounded (see below)
from typing import Any, Final, Optional

from streams.vocab import VITAL_SIGNALS

from .registry import HOUR_MS, WINDOWS, rolling_base

WINDOW_MS: Final[tuple[int, ...]] = tuple(ms for _, ms in WINDOWS)  # ascending, nested
N_WINDOWS: Final = len(WINDOW_MS)
WIDEST_MS: Final = WINDOW_MS[-1]
N_SIGNALS: Final = len(VITAL_SIGNALS)
REANCHOR_MS: Final = 48 * HOUR_MS
_COMPACT_ROWS: Final = 512  # drop dead rows in batches: `del rows[:k]` is a memmove
_SCALES: Final[tuple[int, ...]] = (1, 10, 100, 1000, 10_000, 1 << 52)  # decimal k=0..4, then binary
_BINARY: Final = len(_SCALES) - 1
_ZERO: Final = (0, 0, 0, 0, 0, 0)  # (n, sum V, sum V^2, sum T, sum T^2, sum T*V)
_EMPTY: Final = (nan, nan, nan, nan, nan, 0)

# In-memory vitals row: (ts_ms, source, *VITAL_SIGNALS values, consciousness, on_oxygen).
Row = tuple
ROW_VALUES: Final = 2
ROW_CONS: Final = ROW_VALUES + N_SIGNALS
ROW_O2: Final = ROW_CONS + 1
_W0: Final = WINDOW_MS[0]
_W1: Final = WINDOW_MS[1]
assert N_WINDOWS == 3  # the hot path is unrolled for three nested windows


def fixed_point(value: float, mode: int) -> Optional[int]:
    """Exact integer image of ``value`` at scale ``_SCALES[mode]``, None if it does not round-trip."""
    d = _SCALES[mode]
    x = value * d
    v = int(x)
    if v == x or mode == _BINARY:  # binary: exact for |value| >= 1, truncates below 2**-52 otherwise
        return v
    v = round(x)
    return v if _div(v, d) == value else None


def required_mode(value: float, at_least: int = 0) -> int:
    """Smallest scale mode >= at_least that represents ``value`` exactly."""
    for mode in range(at_least, _BINARY):
        if fixed_point(value, mode) is not None:
            return mode
    return _BINARY


def window_stats(m: tuple[int, ...], d: int, dd: int, per_hour: float, hi: float, lo: float) -> tuple[float, ...]:
    """(mean, std, min, max, trend per hour, count) from exact sums; NaN where undefined.

    The hot path in :meth:`VitalsWindows.push` inlines the same expressions.
    """
    n, s1, s2, st, stt, stv = m
    if n == 0:
        return _EMPTY
    if n == 1:
        return (_div(s1, d), nan, lo, hi, nan, 1)
    den = n * stt - st * st  # exact: 0 iff all times are equal
    return (
        _div(s1, n * d),
        sqrt(_div(n * s2 - s1 * s1, n * (n - 1) * dd)),
        lo,
        hi,
        float(n * stv - st * s1) / float(den) * per_hour if den else nan,
        n,  # the int count becomes a float64 in the vector
    )


def _shift(m: tuple[int, ...], d: int) -> tuple[int, ...]:
    """Re-express the time sums for T' = T - d (exact)."""
    n, s1, s2, st, stt, stv = m
    return (n, s1, s2, st - n * d, stt - 2 * d * st + n * d * d, stv - d * s1)


class SignalWindows:
    """One signal: exact sums per window, fixed-point scale, min/max deques over the widest window."""

    __slots__ = ("m", "mode", "scale", "dd", "fscale", "per_hour", "mt", "mv", "nt", "nv", "dirty", "bases")

    def __init__(self, signal: str) -> None:
        self.m: list[tuple[int, ...]] = [_ZERO] * N_WINDOWS
        self.mode = 0
        self.scale = self.dd = 1
        self.fscale = 1.0
        self.per_hour = float(HOUR_MS)
        self.mt: deque[int] = deque()  # max deque: times, values strictly decreasing
        self.mv: deque[float] = deque()
        self.nt: deque[int] = deque()  # min deque: times, values strictly increasing
        self.nv: deque[float] = deque()
        self.dirty = True
        self.bases = tuple(rolling_base(signal, win) for win, _ in WINDOWS)

    def fix(self, v: float) -> int:
        """Fixed-point image of a value already accepted at the current scale."""
        x = v * self.fscale
        r = int(x)
        if r != x:
            r = fixed_point(v, self.mode)  # type: ignore[assignment]
        return r

    def rescale(self, mode: int, si: int, rows: list[Row], wstart: list[int], anchor: int) -> None:
        """Switch to a finer scale and recompute every window's sums from the rows (rare)."""
        self.mode, self.scale = mode, _SCALES[mode]
        self.dd = self.scale * self.scale
        self.fscale = float(self.scale)
        self.per_hour = HOUR_MS / self.scale
        col = ROW_VALUES + si
        for wi in range(N_WINDOWS):
            n = s1 = s2 = st = stt = stv = 0
            for row in rows[wstart[wi] :]:
                v = row[col]
                if v is not None:
                    V, T = self.fix(v), row[0] - anchor
                    n += 1
                    s1 += V
                    s2 += V * V
                    st += T
                    stt += T * T
                    stv += T * V
            self.m[wi] = (n, s1, s2, st, stt, stv)
        self.dirty = True

    def add(self, w0: int, ts: int, T: int, V: int, v: float) -> None:
        """Add one observation to windows w0.. (general path)."""
        m = self.m
        for wi in range(w0, N_WINDOWS):
            n, s1, s2, st, stt, stv = m[wi]
            m[wi] = (n + 1, s1 + V, s2 + V * V, st + T, stt + T * T, stv + T * V)
        self.dirty = True
        mt = self.mt
        if not mt or ts >= mt[-1]:
            self.push_extreme(ts, v)
        else:
            self.insert_extreme(ts, v)

    def push_extreme(self, ts: int, v: float) -> None:
        mt, mv = self.mt, self.mv
        while mv and mv[-1] <= v:
            mv.pop()
            mt.pop()
        mt.append(ts)
        mv.append(v)
        nt, nv = self.nt, self.nv
        while nv and nv[-1] >= v:
            nv.pop()
            nt.pop()
        nt.append(ts)
        nv.append(v)

    def insert_extreme(self, ts: int, v: float) -> None:
        """Insert an out-of-order observation into both monotonic deques (rare path)."""
        for tq, vq, is_max in ((self.mt, self.mv, True), (self.nt, self.nv, False)):
            times, vals = list(tq), list(vq)
            p = bisect_right(times, ts)  # equal times count as earlier: arrival order
            # vals[p] is the max (min) of everything after the new observation
            if p < len(vals) and (vals[p] >= v if is_max else vals[p] <= v):
                continue
            j = p
            while j and (vals[j - 1] <= v if is_max else vals[j - 1] >= v):
                j -= 1
            times[j:p], vals[j:p] = [ts], [v]
            tq.clear()
            tq.extend(times)
            vq.clear()
            vq.extend(vals)

    def evict_extremes(self, cut: int) -> None:
        for tq, vq in ((self.mt, self.mv), (self.nt, self.nv)):
            while tq and tq[0] <= cut:
                tq.popleft()
                vq.popleft()

    def extremes(self, wi: int, t: int) -> tuple[float, float]:
        """(max, min) of window ``wi``; only meaningful when it holds observations."""
        if wi == N_WINDOWS - 1:
            return self.mv[0], self.nv[0]
        cut = t - WINDOW_MS[wi]
        return self.mv[bisect_right(self.mt, cut)], self.nv[bisect_right(self.nt, cut)]

    def write(self, vec: list[float], t: int) -> None:
        """Write every window's stats into ``vec`` (general path)."""
        for wi in range(N_WINDOWS):
            m = self.m[wi]
            b = self.bases[wi]
            if m[0] == 0:
                vec[b : b + 6] = _EMPTY
            else:
                hi, lo = self.extremes(wi, t)
                vec[b : b + 6] = window_stats(m, self.scale, self.dd, self.per_hour, hi, lo)
        self.dirty = False


class VitalsWindows:
    """A patient's retained vitals rows, sorted by (ts, arrival), and their window statistics.

    The evaluation time ``t`` is the patient's latest event time. The general
    path is :meth:`advance` (move t, evict) + :meth:`insert` (a row at its sorted
    position, possibly behind t) + :meth:`write_rolling`; :meth:`push` does all
    three at once for the common case of a current row.
    """

    __slots__ = ("t", "anchor", "keep_ms", "rows", "rts", "wstart", "sigs", "last")

    def __init__(self, t: int, keep_ms: int) -> None:
        self.t = t
        self.anchor = t
        self.keep_ms = keep_ms  # rows this recent are kept for de-duplication, even outside the windows
        self.rows: list[Row] = []
        self.rts: list[int] = []
        self.wstart = [0] * N_WINDOWS  # first row index inside each window
        self.sigs = tuple(SignalWindows(s) for s in VITAL_SIGNALS)
        # (ts, value) of the last observation per signal, then consciousness, then on_oxygen.
        self.last: list[Optional[tuple[int, Any]]] = [None] * (N_SIGNALS + 2)

    def is_duplicate(self, ts: int, source: str) -> bool:
        rts = self.rts
        if not rts or ts > rts[-1]:
            return False
        rows, n = self.rows, len(rts)
        i = bisect_left(rts, ts)
        while i < n and rts[i] == ts:
            if rows[i][1] == source:
                return True
            i += 1
        return False

    def write_rolling(self, vec: list[float]) -> None:
        """Refresh the rolling block of ``vec`` for every signal whose windows changed."""
        t = self.t
        for sig in self.sigs:
            if sig.dirty:
                sig.write(vec, t)

    # -- general path -------------------------------------------------------------
    def advance(self, t: int) -> None:
        """Move the evaluation time forward to ``t``, evicting rows that left each window."""
        if t <= self.t:
            return
        self.t = t
        rows, rts, sigs, wstart = self.rows, self.rts, self.sigs, self.wstart
        nrows = len(rts)
        anchor = self.anchor
        for wi in range(N_WINDOWS):
            cut = t - WINDOW_MS[wi]
            i = wstart[wi]
            while i < nrows and rts[i] <= cut:
                row = rows[i]
                T = row[0] - anchor
                for si in range(N_SIGNALS):
                    v = row[ROW_VALUES + si]
                    if v is not None:
                        sig = sigs[si]
                        V = sig.fix(v)
                        n, s1, s2, st, stt, stv = sig.m[wi]
                        sig.m[wi] = (n - 1, s1 - V, s2 - V * V, st - T, stt - T * T, stv - T * V)
                        sig.dirty = True
                i += 1
            wstart[wi] = i
        cut = t - WIDEST_MS
        for sig in sigs:
            sig.evict_extremes(cut)
        self._housekeeping()

    def insert(self, row: Row) -> None:
        """Add one accepted row (``row[0] <= t``) to the rows, windows and latest values."""
        ts = row[0]
        rts, rows, sigs, wstart = self.rts, self.rows, self.sigs, self.wstart
        # Fixed-point images first: a finer scale recomputes sums from the rows without this one.
        fixed: list[Optional[int]] = [None] * N_SIGNALS
        for si in range(N_SIGNALS):
            v = row[ROW_VALUES + si]
            if v is not None:
                sig = sigs[si]
                V = fixed_point(v, sig.mode)
                if V is None:
                    sig.rescale(required_mode(v, sig.mode), si, rows, wstart, self.anchor)
                    V = sig.fix(v)
                fixed[si] = V
        p = bisect_right(rts, ts)
        rts.insert(p, ts)
        rows.insert(p, row)
        t = self.t
        w0 = N_WINDOWS  # windows w0.. (nested) contain the row
        for wi in range(N_WINDOWS - 1, -1, -1):
            if ts > t - WINDOW_MS[wi]:
                w0 = wi
            else:  # the row sits before this window's start, which shifts by one
                wstart[wi] += 1
        T = ts - self.anchor
        for si in range(N_SIGNALS):
            V = fixed[si]
            if V is not None and w0 < N_WINDOWS:
                sigs[si].add(w0, ts, T, V, row[ROW_VALUES + si])
        self._track_last(row)

    def _track_last(self, row: Row) -> None:
        ts, last = row[0], self.last
        for k in range(N_SIGNALS + 2):
            v = row[ROW_VALUES + k]
            if v is not None:
                prev = last[k]
                if prev is None or ts >= prev[0]:
                    last[k] = (ts, v)

    def _housekeeping(self) -> None:
        if self.wstart[-1] >= _COMPACT_ROWS:
            # Rows before the widest window are dead unless still inside the lateness horizon.
            k = min(self.wstart[-1], bisect_left(self.rts, self.t - self.keep_ms))
            if k > 0:
                del self.rows[:k]
                del self.rts[:k]
                self.wstart = [s - k for s in self.wstart]
        d = self.t - self.anchor
        if d > REANCHOR_MS:
            for sig in self.sigs:
                sig.m = [_shift(m, d) for m in sig.m]
            self.anchor = self.t

    # -- hot path -----------------------------------------------------------------
    def push(self, row: Row, t: int, vec: list[float]) -> bool:
        """Advance to ``t`` (>= row time), append a current row and refresh ``vec``'s rolling block.

        Returns False, changing nothing, when the row needs the general path
        (older than the newest row, outside the narrowest window, or a value
        that needs a finer fixed-point scale).
        """
        ts = row[0]
        rts, rows, sigs = self.rts, self.rows, self.sigs
        if (rts and ts < rts[-1]) or ts <= t - _W0 or t < self.t:
            return False
        fixed: list[Optional[int]] = []
        for si in range(N_SIGNALS):
            v = row[ROW_VALUES + si]
            if v is None:
                fixed.append(None)
                continue
            x = v * sigs[si].fscale
            F: Optional[int] = int(x)
            if F != x:
                F = fixed_point(v, sigs[si].mode)
                if F is None:
                    return False
            fixed.append(F)
        self.t = t
        rts.append(ts)
        rows.append(row)
        wstart = self.wstart
        # Rows leaving each window: [old start, new start); the new row is inside all three.
        ranges = []
        for wi in range(N_WINDOWS):
            cut = t - WINDOW_MS[wi]
            i = j = wstart[wi]
            while rts[j] <= cut:
                j += 1
            wstart[wi] = j
            ranges.append((i, j, cut))
        cut24 = ranges[-1][2]
        anchor = self.anchor
        T = ts - anchor
        TT = T * T
        for si in range(N_SIGNALS):
            sig = sigs[si]
            V = fixed[si]
            col = ROW_VALUES + si
            mt, mv, nt, nv = sig.mt, sig.mv, sig.nt, sig.nv
            while mt and mt[0] <= cut24:
                mt.popleft()
                mv.popleft()
            while nt and nt[0] <= cut24:
                nt.popleft()
                nv.popleft()
            if V is not None:
                v = row[col]
                VV = V * V
                TV = T * V
                while mv and mv[-1] <= v:
                    mv.pop()
                    mt.pop()
                mt.append(ts)
                mv.append(v)
                while nv and nv[-1] >= v:
                    nv.pop()
                    nt.pop()
                nt.append(ts)
                nv.append(v)
            sm = sig.m
            d = sig.scale
            dd = sig.dd
            fs = sig.fscale
            per_hour = sig.per_hour
            bases = sig.bases
            pending = sig.dirty  # changed on the general path since the last write
            for wi in range(N_WINDOWS):
                i, j, cut = ranges[wi]
                if V is None and i == j and not pending:
                    continue
                n, s1, s2, st, stt, stv = sm[wi]
                changed = V is not None or pending
                while i < j:
                    r = rows[i]
                    i += 1
                    x = r[col]
                    if x is None:
                        continue
                    y = x * fs
                    X = int(y)
                    if X != y:
                        X = sig.fix(x)
                    Tr = r[0] - anchor
                    n -= 1
                    s1 -= X
                    s2 -= X * X
                    st -= Tr
                    stt -= Tr * Tr
                    stv -= Tr * X
                    changed = True
                if not changed:
                    continue
                if V is not None:
                    n += 1
                    s1 += V
                    s2 += VV
                    st += T
                    stt += TT
                    stv += TV
                sm[wi] = (n, s1, s2, st, stt, stv)
                b = bases[wi]
                # Same expressions as window_stats (bit-identical results on both paths).
                if n == 0:
                    vec[b : b + 6] = _EMPTY
                    continue
                if wi == 2:
                    hi = mv[0]
                    lo = nv[0]
                else:
                    hi = mv[bisect_right(mt, cut)]
                    lo = nv[bisect_right(nt, cut)]
                if n == 1:
                    vec[b : b + 6] = (_div(s1, d), nan, lo, hi, nan, 1)
                    continue
                den = n * stt - st * st
                vec[b : b + 6] = (
                    _div(s1, n * d),
                    sqrt(_div(n * s2 - s1 * s1, n * (n - 1) * dd)),
                    lo,
                    hi,
                    float(n * stv - st * s1) / float(den) * per_hour if den else nan,
                    n,
                )
            sig.dirty = False
        last = self.last
        for k in range(N_SIGNALS):  # the newest row: its values are the latest ones
            if fixed[k] is not None:
                last[k] = (ts, row[ROW_VALUES + k])
        if row[ROW_CONS] is not None:
            last[N_SIGNALS] = (ts, row[ROW_CONS])
        if row[ROW_O2] is not None:
            last[N_SIGNALS + 1] = (ts, row[ROW_O2])
        if wstart[-1] >= _COMPACT_ROWS or t - anchor > REANCHOR_MS:
            self._housekeeping()
        return True
