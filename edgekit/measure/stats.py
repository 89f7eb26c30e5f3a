"""Intervals the quality figures carry: Student-t intervals of paired ratios over windows, the moving-block
bootstrap (Künsch 1989) with an automatic block length (Politis and White 2004), and how an interval reads.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from edgekit.core.errors import InputError

Z95 = 1.959963984540054


def t_quantile(windows: int, level: float = 0.95) -> float:
    """Two-sided Student-t multiplier for ``windows`` samples (``windows - 1`` degrees of freedom); nan below 2."""
    return float(stats.t.ppf(0.5 + level / 2, windows - 1)) if windows >= 2 else float("nan")


def ratio_interval(numerators: np.ndarray, denominators: np.ndarray,
                   level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the ratio estimator and its t-interval, each window one sample."""
    mean, se = ratio_stat(numerators, denominators)
    half = t_quantile(len(np.asarray(numerators)), level) * se
    return mean, mean - half, mean + half


def interval_side(low: float, high: float, value: float = 0.0) -> int:
    """Where the interval ``[low, high]`` lies against ``value``: +1 wholly above, -1 wholly below, 0 when it
    holds ``value`` or is not a number (one window, or nothing measured): the one reading every claim about an
    interval is made from, so both sides are read alike."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return 0
    return 1 if low > value else -1 if high < value else 0


def delta_reading(low: float, high: float) -> str:
    """What a perplexity delta's interval ``[low, high]`` (variant vs its baseline) allows one to say on the
    scored text: "worse" when it lies wholly above zero, "better" when wholly below, "within noise" when it holds
    zero, "no interval" when there is none (a single window). Both sides are read alike: a resolved difference
    below zero is as real on this text as one above it; whether it holds on other text is a question for
    another split (``--eval-text``)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    return {1: "worse", -1: "better", 0: "within noise"}[interval_side(low, high)]


def ratio_stat(numerators: np.ndarray, denominators: np.ndarray) -> tuple[float, float]:
    """Mean sum(num)/sum(den) and its standard error, each window one sample (ratio estimator)."""
    num, den = np.asarray(numerators, float), np.asarray(denominators, float)
    mean = num.sum() / den.sum()
    k = len(num)
    if k < 2:
        return float(mean), float("nan")
    resid = num - mean * den
    se = math.sqrt(k / (k - 1) * (resid ** 2).sum()) / den.sum()
    return float(mean), float(se)


def block_length(values: np.ndarray) -> int:
    """Block length for a circular block bootstrap of the mean of ``values`` (a series in order).

    The Politis & White (2004) automatic choice with the correction of Patton, Politis & White
    (2009): autocorrelations up to the first run of insignificant lags set a flat-top lag window;
    the optimal length is (2 G^2 / D)^(1/3) n^(1/3), with G the window's sum of |k| R(k) and
    D = 4/3 (sum of R(k))^2. 1 for a series without variance or correlation."""
    x = np.asarray(values, float)
    n = len(x)
    x = x - x.mean()
    if n < 4 or not np.any(x):
        return 1
    spectrum = np.fft.rfft(x, 2 * n)
    kn = max(5, int(math.log10(n)))
    max_lag = min(n - 1, int(math.ceil(math.sqrt(n))) + kn)
    acov = np.fft.irfft(spectrum * spectrum.conj(), 2 * n)[: max_lag + 1] / n
    insignificant = np.abs(acov[1:] / acov[0]) < 2 * math.sqrt(math.log10(n) / n)
    runs = [m for m in range(max_lag - kn + 1) if insignificant[m : m + kn].all()]
    m_hat = runs[0] if runs else max_lag
    window = min(2 * max(m_hat, 1), max_lag)
    lags = np.arange(-window, window + 1)
    flat_top = np.clip(2 * (1 - np.abs(lags / window)), 0, 1)
    cov = acov[np.abs(lags)]
    long_run, g = float((flat_top * cov).sum()), float((flat_top * np.abs(lags) * cov).sum())
    if long_run <= 0:
        return 1
    b = (2 * g ** 2 / (4 / 3 * long_run ** 2)) ** (1 / 3) * n ** (1 / 3)
    return int(np.clip(math.ceil(b), 1, math.ceil(min(3 * math.sqrt(n), n / 3))))


def block_bootstrap_interval(values: np.ndarray, level: float = 0.95, block: int | None = None,
                             resamples: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """``(mean, low, high, block)``: the mean of a series and its circular block bootstrap percentile interval.

    Each resample joins blocks of ``block`` consecutive values (wrapping at the end; the Politis &
    White length, :func:`block_length`, unless given) at uniformly drawn starts, cut to the
    series' length; block sums come from one cumulative sum, so a resample costs n / block
    additions. ``block=1`` is the iid bootstrap, too narrow for autocorrelated series."""
    x = np.asarray(values, float)
    n = len(x)
    if n < 2:
        raise InputError(f"a bootstrap needs at least 2 values, got {n}; score more tokens")
    block = block_length(x) if block is None else int(block)
    if not 1 <= block <= n:
        raise InputError(f"block={block} must be between 1 and the number of values ({n})")
    blocks, last = -(-n // block), n - (-(-n // block) - 1) * block
    sums = np.concatenate([[0.0], np.cumsum(np.concatenate([x, x[:block]]))])
    starts = np.random.default_rng(seed).integers(0, n, (resamples, blocks))
    totals = ((sums[starts[:, :-1] + block] - sums[starts[:, :-1]]).sum(1)
              + sums[starts[:, -1] + last] - sums[starts[:, -1]])
    low, high = np.quantile(totals / n, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(low), float(high), block
