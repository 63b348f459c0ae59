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

Min/max: one pair of monotonic queues per signal over the widest window; the
narrower windows' extremes are the first queue entries inside them (a suffix
maximum of the 24 h window is also the maximum of any suffix window).

Divisions of the exact integers go through :func:`_quotient`, which rounds the exact quotient once, as
CPython's ``int / int`` does. The module is compiled with mypyc (setup.py), whose ``int / int`` converts
each operand to a double first and so rounds twice once they pass 2**53.

The state is in types mypyc compiles to native code (see docs/features.md, "Compiled modules"): the sums
are attributes of a class (short integers stay unboxed), the queues are lists with a moving head, and one
function writes a window's statistics on every path, so the paths agree to the bit.

Hot path (:meth:`VitalsWindows.push`): a current vitals row evicts, adds and
recomputes each (signal, window) in one pass.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from math import nan, sqrt
from operator import truediv
from typing import Any, Final, Optional

from streams.vocab import VITAL_SIGNALS

from .registry import HOUR_MS, WINDOWS, rolling_base

WINDOW_MS: Final[tuple[int, ...]] = tuple(ms for _, ms in WINDOWS)  # ascending, nested
N_WINDOWS: Final = len(WINDOW_MS)
WIDEST_MS: Final = WINDOW_MS[-1]
N_SIGNALS: Final = len(VITAL_SIGNALS)
REANCHOR_MS: Final = 48 * HOUR_MS
_COMPACT_ROWS: Final = 512  # drop dead rows in batches: `del rows[:k]` is a memmove
_COMPACT_QUEUE: Final = 32  # likewise for the heads of the min/max queues
_SCALES: Final[tuple[int, ...]] = (1, 10, 100, 1000, 10_000, 1 << 52)  # decimal k=0..4, then binary
_BINARY: Final = len(_SCALES) - 1
_EXACT: Final = 1 << 53  # integers up to this convert to a double exactly

# In-memory vitals row: (ts_ms, source, *VITAL_SIGNALS values, consciousness, on_oxygen).
Row = tuple
ROW_VALUES: Final = 2
ROW_CONS: Final = ROW_VALUES + N_SIGNALS
ROW_O2: Final = ROW_CONS + 1
assert N_WINDOWS == 3  # the hot path's window ranges are laid out for three nested windows


def _quotient(a: int, b: int) -> float:
    """a / b (b > 0) rounded once, as CPython's int division does.

    Both operands within 2**53 convert to doubles exactly and one IEEE division rounds the exact quotient
    (CPython's own fast path); larger ones go to CPython's division.
    """
    if -_EXACT <= a <= _EXACT and b <= _EXACT:
        return float(a) / float(b)
    return float(truediv(a, b))


def fixed_point(value: float, mode: int) -> Optional[int]:
    """Exact integer image of ``value`` at scale ``_SCALES[mode]``, None if it does not round-trip.

    A product ``value * d`` that happens to be a whole number is no proof: 20.599999999999998 * 100 rounds
    to 2060.0, whose image is 20.6. Only the round trip (``V / d == value``) is.
    """
    d = _SCALES[mode]
    x = value * d
    v = int(x)
    if mode == _BINARY:  # exact for |value| >= 1, truncates below 2**-52 otherwise
        return v
    if v != x:
        v = round(x)
    return v if _quotient(v, d) == value else None


def required_mode(value: float, at_least: int = 0) -> int:
    """Smallest scale mode >= at_least that represents ``value`` exactly."""
    for mode in range(at_least, _BINARY):
        if fixed_point(value, mode) is not None:
            return mode
    return _BINARY


class Sums:
    """Exact running sums of one (signal, window): n, sum V, sum V^2, sum T, sum T^2, sum T*V."""

    __slots__ = ("n", "s1", "s2", "st", "stt", "stv")

    def __init__(self) -> None:
        self.n = 0
        self.s1 = 0
        self.s2 = 0
        self.st = 0
        self.stt = 0
        self.stv = 0

    def add(self, T: int, V: int) -> None:
        self.n += 1
        self.s1 += V
        self.s2 += V * V
        self.st += T
        self.stt += T * T
        self.stv += T * V

    def remove(self, T: int, V: int) -> None:
        self.n -= 1
        self.s1 -= V
        self.s2 -= V * V
        self.st -= T
        self.stt -= T * T
        self.stv -= T * V

    def shift(self, d: int) -> None:
        """Re-express the time sums for T' = T - d (exact)."""
        n, s1, st = self.n, self.s1, self.st
        self.stt = self.stt - 2 * d * st + n * d * d
        self.st = st - n * d
        self.stv = self.stv - d * s1


class SignalWindows:
    """One signal: exact sums per window, fixed-point scale, min/max queues over the widest window.

    The queues are lists whose live part starts at a head index (``mh``, ``nh``): dropping the oldest entry
    moves the head, and the dead prefix is cut off in batches.
    """

    __slots__ = ("m", "mode", "scale", "dd", "fscale", "per_hour", "mt", "mv", "mh", "nt", "nv", "nh", "dirty",
                 "bases")

    def __init__(self, signal: str) -> None:
        self.m: list[Sums] = [Sums() for _ in range(N_WINDOWS)]
        self.mode = 0
        self.scale = 1
        self.dd = 1
        self.fscale = 1.0
        self.per_hour = float(HOUR_MS)
        self.mt: list[int] = []  # max queue: times, values strictly decreasing
        self.mv: list[float] = []
        self.mh = 0
        self.nt: list[int] = []  # min queue: times, values strictly increasing
        self.nv: list[float] = []
        self.nh = 0
        self.dirty = True
        self.bases: list[int] = [rolling_base(signal, win) for win, _ in WINDOWS]

    def fix(self, v: float) -> int:
        """Fixed-point image of a value already accepted at the current scale (it round-trips: a whole
        product is then the image itself)."""
        x = v * self.fscale
        r = int(x)
        if r != x:
            f = fixed_point(v, self.mode)
            assert f is not None
            r = f
        return r

    def rescale(self, mode: int, si: int, rows: list[Row], wstart: list[int], anchor: int) -> None:
        """Switch to a finer scale and recompute every window's sums from the rows (rare).

        A value that round-trips at a decimal scale does at every finer one (its images are below 2**51), so
        every row has an image at the new scale.
        """
        col = ROW_VALUES + si
        d = _SCALES[mode]
        sums = []
        for wi in range(N_WINDOWS):
            m = Sums()
            for row in rows[wstart[wi] :]:
                v = row[col]
                if v is not None:
                    V = fixed_point(v, mode)
                    if V is None:
                        raise ValueError(f"{v!r} has no exact image at scale {d}")  # a bug: see above
                    m.add(row[0] - anchor, V)
            sums.append(m)
        self.m = sums  # only now: a failure above leaves the windows as they were
        self.mode, self.scale = mode, d
        self.dd = d * d
        self.fscale = float(d)
        self.per_hour = HOUR_MS / d
        self.dirty = True

    def add(self, w0: int, ts: int, T: int, V: int, v: float) -> None:
        """Add one observation to windows w0.. (general path)."""
        for wi in range(w0, N_WINDOWS):
            self.m[wi].add(T, V)
        self.dirty = True
        if len(self.mt) == self.mh or ts >= self.mt[-1]:
            self.push_extreme(ts, v)
        else:
            self.insert_extreme(ts, v)

    def push_extreme(self, ts: int, v: float) -> None:
        mt, mv, mh = self.mt, self.mv, self.mh
        while len(mv) > mh and mv[-1] <= v:
            mv.pop()
            mt.pop()
        mt.append(ts)
        mv.append(v)
        nt, nv, nh = self.nt, self.nv, self.nh
        while len(nv) > nh and nv[-1] >= v:
            nv.pop()
            nt.pop()
        nt.append(ts)
        nv.append(v)

    def insert_extreme(self, ts: int, v: float) -> None:
        """Insert an out-of-order observation into both monotonic queues (rare path)."""
        for is_max in (True, False):
            times = (self.mt[self.mh :] if is_max else self.nt[self.nh :])
            vals = (self.mv[self.mh :] if is_max else self.nv[self.nh :])
            p = bisect_right(times, ts)  # equal times count as earlier: arrival order
            # vals[p] is the max (min) of everything after the new observation
            if p < len(vals) and (vals[p] >= v if is_max else vals[p] <= v):
                continue
            j = p
            while j and (vals[j - 1] <= v if is_max else vals[j - 1] >= v):
                j -= 1
            times[j:p] = [ts]
            vals[j:p] = [v]
            if is_max:
                self.mt, self.mv, self.mh = times, vals, 0
            else:
                self.nt, self.nv, self.nh = times, vals, 0

    def evict_extremes(self, cut: int) -> None:
        """Drop queue entries at or before ``cut`` (they left the widest window)."""
        mt, nt = self.mt, self.nt
        mh, nh = self.mh, self.nh
        while mh < len(mt) and mt[mh] <= cut:
            mh += 1
        while nh < len(nt) and nt[nh] <= cut:
            nh += 1
        if mh >= _COMPACT_QUEUE:
            del mt[:mh]
            del self.mv[:mh]
            mh = 0
        if nh >= _COMPACT_QUEUE:
            del nt[:nh]
            del self.nv[:nh]
            nh = 0
        self.mh, self.nh = mh, nh

    def write(self, vec: list[float], wi: int, t: int) -> None:
        """Write window ``wi``'s (mean, std, min, max, trend per hour, count) into ``vec``; NaN where undefined.

        Every path writes the statistics here, so they agree to the bit.
        """
        m = self.m[wi]
        n = m.n
        b = self.bases[wi]
        if n == 0:
            vec[b] = nan
            vec[b + 1] = nan
            vec[b + 2] = nan
            vec[b + 3] = nan
            vec[b + 4] = nan
            vec[b + 5] = 0.0
            return
        if wi == N_WINDOWS - 1:
            hi = self.mv[self.mh]
            lo = self.nv[self.nh]
        else:
            cut = t - WINDOW_MS[wi]
            hi = self.mv[_first_after(self.mt, cut, self.mh)]
            lo = self.nv[_first_after(self.nt, cut, self.nh)]
        s1 = m.s1
        vec[b + 2] = lo
        vec[b + 3] = hi
        vec[b + 5] = float(n)
        if n == 1:
            vec[b] = _quotient(s1, self.scale)
            vec[b + 1] = nan
            vec[b + 4] = nan
            return
        st = m.st
        den = n * m.stt - st * st  # exact: 0 iff all times are equal
        vec[b] = _quotient(s1, n * self.scale)
        vec[b + 1] = sqrt(_quotient(n * m.s2 - s1 * s1, n * (n - 1) * self.dd))
        vec[b + 4] = float(n * m.stv - st * s1) / float(den) * self.per_hour if den else nan

    def write_all(self, vec: list[float], t: int) -> None:
        """Write every window's statistics (general path)."""
        for wi in range(N_WINDOWS):
            self.write(vec, wi, t)
        self.dirty = False


def _first_after(a: list[int], x: int, lo: int) -> int:
    """Index of the first entry of sorted ``a[lo:]`` greater than ``x`` (bisect_right, natively typed)."""
    hi = len(a)
    while lo < hi:
        mid = (lo + hi) >> 1
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


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
        self.wstart: list[int] = [0] * N_WINDOWS  # first row index inside each window
        self.sigs: list[SignalWindows] = [SignalWindows(s) for s in VITAL_SIGNALS]
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
                sig.write_all(vec, t)

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
                        sig.m[wi].remove(T, sig.fix(v))
                        sig.dirty = True
                i += 1
            wstart[wi] = i
        cut = t - WIDEST_MS
        for sig in sigs:
            sig.evict_extremes(cut)
        self._housekeeping()

    def insert(self, row: Row) -> None:
        """Add one accepted row (``row[0] <= t``) to the rows, windows and latest values."""
        ts: int = row[0]
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
            F = fixed[si]
            if F is not None and w0 < N_WINDOWS:
                sigs[si].add(w0, ts, T, F, row[ROW_VALUES + si])
        self._track_last(row)

    def _track_last(self, row: Row) -> None:
        ts: int = row[0]
        last = self.last
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
                for m in sig.m:
                    m.shift(d)
            self.anchor = self.t

    # -- hot path -----------------------------------------------------------------
    def push(self, row: Row, t: int, vec: list[float]) -> bool:
        """Advance to ``t`` (>= row time), append a current row and refresh ``vec``'s rolling block.

        Returns False, changing nothing, when the row needs the general path
        (older than the newest row, outside the narrowest window, or a value
        that needs a finer fixed-point scale).
        """
        ts: int = row[0]
        rts, rows, sigs = self.rts, self.rows, self.sigs
        if (rts and ts < rts[-1]) or ts <= t - WINDOW_MS[0] or t < self.t:
            return False
        fixed: list[Optional[int]] = []
        for si in range(N_SIGNALS):
            value: Optional[float] = row[ROW_VALUES + si]
            if value is None:
                fixed.append(None)
                continue
            v: float = value
            fscale = sigs[si].fscale
            scaled = v * fscale
            F = int(scaled)
            if F != scaled or float(F) / fscale != v:  # a whole product is no proof of an image (fixed_point)
                G = fixed_point(v, sigs[si].mode)
                if G is None:
                    return False
                F = G
            fixed.append(F)
        self.t = t
        rts.append(ts)
        rows.append(row)
        wstart = self.wstart
        # Rows leaving window wi: [starts[wi], wstart[wi]); the new row is inside all three.
        starts = [0] * N_WINDOWS
        for wi in range(N_WINDOWS):
            cut = t - WINDOW_MS[wi]
            i = j = wstart[wi]
            while rts[j] <= cut:
                j += 1
            starts[wi] = i
            wstart[wi] = j
        anchor = self.anchor
        T = ts - anchor
        cut24 = t - WIDEST_MS
        for si in range(N_SIGNALS):
            sig = sigs[si]
            F0 = fixed[si]
            sig.evict_extremes(cut24)
            if F0 is not None:
                sig.push_extreme(ts, row[ROW_VALUES + si])
            col = ROW_VALUES + si
            changed_any = sig.dirty  # changed on the general path since the last write
            for wi in range(N_WINDOWS):
                i, j = starts[wi], wstart[wi]
                changed = changed_any or F0 is not None or i < j
                if not changed:
                    continue
                m = sig.m[wi]
                while i < j:
                    r = rows[i]
                    i += 1
                    x = r[col]
                    if x is not None:
                        rt: int = r[0]
                        m.remove(rt - anchor, sig.fix(x))
                if F0 is not None:
                    m.add(T, F0)
                sig.write(vec, wi, t)
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
