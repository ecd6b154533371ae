"""Drift metrics for drift-check, vectorised with numpy (names and formulas as Azure ML model monitoring).

Numeric columns (a = reference, b = current, NaN already removed):
- normalized Wasserstein distance: W1(a, b) / max(std(a, ddof=1), 0.001), W1 exact as in
  scipy.stats.wasserstein_distance;
- Jensen-Shannon distance (base 2) and PSI on a shared histogram: Sturges' rule on the smaller sample,
  ceil(log2(min(n, m)) + 1) equal-width bins over the union's [min, max] (np.histogram's edges);
- PSI = sum((q - p) * ln(q / p)) with p = (ref_count + 1) / n, q = (cur_count + 1) / m;
- Kolmogorov-Smirnov statistic sup|F - G| (exact, as scipy.stats.ks_2samp) and its asymptotic p-value
  (Kolmogorov limiting distribution; reported only, never a gate);
- out-of-range share: current values outside the reference [min, max].
Categorical columns: Jensen-Shannon distance (base 2) and PSI over the union of categories, and the share
of current values whose category never occurs in the reference.

W1 and the KS statistic need both samples in sorted order. Sorting 2 x 1M values per column costs more
than the rest of the work together, so `_wasserstein_ks` sorts only what it must: values go into 65,536
fine bins (equal-width, or equal-width in log scale for skewed data; one pass and bincount); wherever
F - G keeps one sign inside a bin, the bin's part of the integral follows from its counts and sums, bins
holding one distinct value follow from their counts, and only bins where F and G may cross (or that may
hold the KS maximum) are sorted. The coarse histogram comes from the same fine bins. The results are
exact up to floating-point rounding.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

NORM_FLOOR = 0.001  # Azure: W1 / max(std(reference), 0.001)


def sturges_bins(n: int, m: int) -> int:
    """Number of histogram bins for numeric JS distance and PSI (Sturges on the smaller sample)."""
    return max(1, math.ceil(math.log2(max(1, min(n, m))) + 1))


def js_distance(p: Any, q: Any) -> float:
    """Jensen-Shannon distance, base 2, of two count or probability vectors (scipy's definition)."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    p, q = p / p.sum(), q / q.sum()
    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(p > 0, p * np.log2(p / mid), 0.0).sum()
        kq = np.where(q > 0, q * np.log2(q / mid), 0.0).sum()
    return float(math.sqrt(max(0.0, (kp + kq) / 2)))


def psi(ref_counts: Any, cur_counts: Any, n: int, m: int) -> float:
    """Population stability index with Azure's +1 smoothing of every bin's count."""
    p = (np.asarray(ref_counts, dtype=float) + 1) / n
    q = (np.asarray(cur_counts, dtype=float) + 1) / m
    return float(((q - p) * np.log(q / p)).sum())


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Two-sided p-value of the KS statistic from Kolmogorov's limiting distribution
    (scipy.stats.kstwobign.sf(d * sqrt(n * m / (n + m)))). Reported only: never a gate."""
    from scipy.special import kolmogorov

    return float(kolmogorov(d * math.sqrt(n * m / (n + m))))



def histogram_edges(lo: float, hi: float, bins: int) -> Any:
    """np.histogram's edges for `bins` equal-width bins over [lo, hi]."""
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def histogram_counts(x: Any, edges: Any) -> Any:
    """Counts per bin, identical to np.histogram(x, edges) for equal-width edges around x."""
    bins = len(edges) - 1
    idx = ((x - edges[0]) * (bins / (edges[-1] - edges[0]))).astype(np.intp)
    np.clip(idx, 0, bins - 1, out=idx)
    idx -= x < edges[idx]  # np.histogram's corrections: compare with the actual edge values
    idx += (x >= edges[idx + 1]) & (idx != bins - 1)
    return np.bincount(idx, minlength=bins)


class _Grid:
    """Fine equal-width bins over the central 99.9 % of both samples, plus an underflow and an
    overflow bin; for skewed data the bins are equal-width in log(x - min) or -log(max - x).

    The bin index is monotone in the value, and x in bin j lies in [edges[j], edges[j + 1]] up to
    floating-point rounding. Only speed depends on the choice of bins, never the results.
    """

    def __init__(self, a: Any, b: Any, lo: float, hi: float, k: int = 1 << 16):
        step = max(1, (len(a) + len(b)) // 10000)
        sample = np.concatenate([a[::step], b[::step]])
        span = hi - lo
        low_gap = max(float(np.quantile(sample, 0.001)) - lo, span * 1e-9)
        high_gap = max(hi - float(np.quantile(sample, 0.999)), span * 1e-9)
        candidates = [(None, 0.0), ("low", low_gap), ("high", high_gap)]
        self.kind, self.delta = min(candidates, key=lambda c: self._crowding(sample, lo, hi, *c))
        c_lo, c_hi = np.quantile(self._forward(sample, lo, hi), [0.0005, 0.9995])
        t_lo, t_hi = self._forward(np.array([lo, hi]), lo, hi)
        if not c_hi > c_lo:
            c_lo, c_hi = t_lo, t_hi
        self.lo, self.hi = lo, hi
        self.k, self.scale = k, k / (c_hi - c_lo)
        self.offset = 1.0 - c_lo * self.scale
        inner = self._inverse(c_lo + np.arange(k + 1) / self.scale)
        self.edges = np.concatenate([[lo], inner, [hi]])
        np.clip(self.edges, lo, hi, out=self.edges)
        self.edges = np.maximum.accumulate(self.edges)

    def _forward(self, x: Any, lo: float, hi: float, kind: str | None = "", delta: float = 0.0) -> Any:
        kind, delta = (self.kind, self.delta) if kind == "" else (kind, delta)
        if kind == "low":
            return np.log(x - lo + delta)
        if kind == "high":
            return -np.log(hi - x + delta)
        return x

    def _inverse(self, y: Any) -> Any:
        if self.kind == "low":
            return np.exp(y) + (self.lo - self.delta)
        if self.kind == "high":
            return (self.hi + self.delta) - np.exp(-y)
        return y

    def _crowding(self, sample: Any, lo: float, hi: float, kind: str | None, delta: float) -> float:
        """How unevenly the sample fills 1024 equal bins in this scale (sum of squared counts)."""
        t = self._forward(sample, lo, hi, kind, delta)
        c_lo, c_hi = np.quantile(t, [0.0005, 0.9995])
        if not c_hi > c_lo:
            return math.inf
        counts = np.histogram(t, bins=1024, range=(c_lo, c_hi))[0]
        return float((counts.astype(float) ** 2).sum())

    @property
    def bins(self) -> int:
        return self.k + 2

    def index(self, x: Any) -> Any:
        f = self._forward(x, self.lo, self.hi)
        f = np.multiply(f, self.scale)
        f += self.offset
        np.clip(f, 0, self.k + 1, out=f)
        return f.astype(np.intp)


def numeric_drift(a: Any, b: Any) -> dict[str, Any]:
    """Every numeric metric for reference `a` and current `b` (1-D float arrays without NaN, non-empty).

    Returns the metrics plus `histogram` (edges, reference and current counts) for charts.
    """
    n, m = len(a), len(b)
    a_min, a_max, b_min, b_max = a.min(), a.max(), b.min(), b.max()
    lo, hi = min(a_min, b_min), max(a_max, b_max)
    edges_c = histogram_edges(lo, hi, sturges_bins(n, m))
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    out_of_range = int(np.count_nonzero(b < a_min) + np.count_nonzero(b > a_max))
    if lo == hi:
        w1 = d = 0.0
        hist_a = histogram_counts(a, edges_c)
        hist_b = histogram_counts(b, edges_c)
    else:
        grid = _Grid(a, b, lo, hi)
        ia, ib = grid.index(a), grid.index(b)
        ca, cb = np.bincount(ia, minlength=grid.bins), np.bincount(ib, minlength=grid.bins)
        w1, d = _wasserstein_ks(a, b, ia, ib, ca, cb, grid)
        hist_a = _coarse_counts(a, ia, ca, grid, edges_c)
        hist_b = _coarse_counts(b, ib, cb, grid, edges_c)
    return {
        "normalized_wasserstein_distance": w1 / max(std, NORM_FLOOR),
        "jensen_shannon_distance": js_distance(hist_a, hist_b),
        "population_stability_index": psi(hist_a, hist_b, n, m),
        "kolmogorov_smirnov_statistic": d,
        "out_of_range_share": out_of_range / m,
        "wasserstein_distance": w1,
        "reference_std": std,
        "ks_pvalue": ks_pvalue(d, n, m),
        "histogram": {"edges": edges_c, "reference": hist_a, "current": hist_b},
    }


def _coarse_counts(x: Any, idx: Any, counts: Any, grid: _Grid, edges_c: Any) -> Any:
    """np.histogram(x, edges_c) from the fine bins: only values in fine bins that hold a coarse edge
    are compared with the edges; every other fine bin lies wholly inside one coarse bin."""
    fe = grid.index(edges_c[1:-1])  # fine bin of each inner coarse edge (monotone)
    mark = np.zeros(grid.bins, bool)
    mark[fe] = True
    coarse_of_fine = np.searchsorted(fe, np.arange(grid.bins), side="left")
    keep = ~mark
    out = np.bincount(coarse_of_fine[keep], weights=counts[keep], minlength=len(edges_c) - 1)
    near = mark[idx]
    if near.any():
        out += histogram_counts(x[near], edges_c)
    return out.astype(np.int64)


def _wasserstein_ks(a: Any, b: Any, ia: Any, ib: Any, ca: Any, cb: Any, grid: _Grid
                    ) -> tuple[float, float]:
    """Exact W1 and KS statistic from the fine bins; only bins where F - G may change sign (or may
    hold the KS maximum) are looked at value by value."""
    n, m, nb = len(a), len(b), grid.bins
    # per-bin sums; values far from 0 relative to their spread are shifted first (cancellation)
    shift = grid.lo if abs(grid.lo) > 16 * (grid.hi - grid.lo) else 0.0
    sa = np.bincount(ia, weights=a - shift if shift else a, minlength=nb)
    sb = np.bincount(ib, weights=b - shift if shift else b, minlength=nb)
    CA = np.concatenate([[0], np.cumsum(ca)])  # values in the bins before bin j
    CB = np.concatenate([[0], np.cumsum(cb)])
    left, right = grid.edges[:-1], grid.edges[1:]
    width = right - left
    right = right - shift
    # F - G keeps one sign inside bin j when one CDF's range lies above the other's (exact integers)
    f_above = CA[:-1] * m >= CB[1:] * n
    g_above = CB[:-1] * n >= CA[1:] * m
    # the integral of F over bin j: (before_j * width + sum over its values of (right - x)) / n
    int_f = (CA[:-1] * width + (ca * right - sa)) / n
    int_g = (CB[:-1] * width + (cb * right - sb)) / m
    d_low = float(np.abs(CA / n - CB / m).max())  # |F - G| between bins: values the sup runs over
    # inside a one-signed bin |F - G| is at most the gap between the far ends of the two ranges
    bound = np.where(f_above, CA[1:] / n - CB[:-1] / m, CB[1:] / m - CA[:-1] / n)
    refine = ~(f_above | g_above) | (bound > d_low)
    w1 = float(np.abs(int_f - int_g)[~refine].sum())
    if refine.any():
        w, d = _exact_bins(a, b, ia, ib, refine, grid.edges, CA, CB)
        w1 += w
        d_low = max(d_low, d)
    return w1, d_low


def _exact_bins(a: Any, b: Any, ia: Any, ib: Any, refine: Any, edges: Any, CA: Any, CB: Any
                ) -> tuple[float, float]:
    """The W1 part and the KS maximum of the bins marked `refine`, from their values in order."""
    n, m = len(a), len(b)
    ma, mb = refine[ia], refine[ib]
    if ma.all() and mb.all():
        va, ba, vb, bb = a, ia, b, ib
    else:
        va, ba, vb, bb = a[ma], ia[ma], b[mb], ib[mb]
    w, d = 0.0, 0.0
    # bins holding a single distinct value need no sorting: F - G is one value left of it, one right
    rep = np.empty(len(edges) - 1)
    rep[bb] = vb
    rep[ba] = va
    varied = np.zeros(len(edges) - 1, bool)
    varied[ba[va != rep[ba]]] = True
    varied[bb[vb != rep[bb]]] = True
    single = refine & ~varied
    if single.any():
        j = np.flatnonzero(single)
        x = np.clip(rep[j], edges[j], edges[j + 1])
        w += float((np.abs(CA[j] / n - CB[j] / m) * (x - edges[j])
                    + np.abs(CA[j + 1] / n - CB[j + 1] / m) * (edges[j + 1] - x)).sum())
        ka, kb = varied[ba], varied[bb]
        va, ba, vb, bb = va[ka], ba[ka], vb[kb], bb[kb]
    if not len(va) + len(vb):
        return w, d
    values = np.concatenate([va, vb])
    bins = np.concatenate([ba, bb])
    is_a = np.zeros(len(values), bool)
    is_a[:len(va)] = True
    order = np.argsort(values)
    values, is_a, bins = values[order], is_a[order], bins[order]
    if (np.diff(bins) < 0).any():  # rounding broke bin order: sort by bin, then value
        order = np.lexsort((values, bins))
        values, is_a, bins = values[order], is_a[order], bins[order]
    np.clip(values, edges[bins], edges[bins + 1], out=values)
    first = np.empty(len(values), bool)
    first[0] = True
    np.not_equal(bins[1:], bins[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    run_a = np.cumsum(is_a)
    run_b = np.arange(1, len(values) + 1) - run_a
    before_a = (run_a - is_a)[starts]
    before_b = (run_b - ~is_a)[starts]
    fa = CA[bins] + run_a - before_a[group]  # reference values <= this one
    fb = CB[bins] + run_b - before_b[group]
    diff = np.abs(fa / n - fb / m)  # |F - G| just right of each value
    last = np.empty(len(values), bool)
    last[-1] = True
    last[:-1] = first[1:]
    nxt = np.empty(len(values))
    nxt[:-1] = values[1:]
    nxt[last] = edges[bins[last] + 1]
    w += float((diff * (nxt - values)).sum())
    gb = bins[starts]
    w += float((np.abs(CA[gb] / n - CB[gb] / m) * (values[starts] - edges[gb])).sum())
    distinct = last.copy()
    distinct[:-1] |= values[1:] != values[:-1]
    return w, float(diff[distinct].max())
