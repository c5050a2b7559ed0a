"""Statistics for a report: intervals on success rates, paired tests, multiple comparisons,
and the smallest difference a paired test could have detected.

Every function takes plain numbers or sequences and returns plain floats, so a report, a
notebook or a CI check can call them without the rest of the harness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from harness.errors import PowersteerError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a success rate of ``successes`` out of ``n``.

    Unlike the normal-approximation interval it stays inside [0, 1] and is sensible at
    0/n and n/n, which steered success rates often are. ``n == 0`` carries no
    information and gives ``(0.0, 1.0)``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise PowersteerError(f"wilson_interval needs 0 <= successes <= n, got {successes}/{n}")
    if not 0.0 < confidence < 1.0:
        raise PowersteerError(f"confidence={confidence} must lie strictly between 0 and 1")
    if n == 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(
    a_success: Sequence[bool] | np.ndarray, b_success: Sequence[bool] | np.ndarray
) -> tuple[int, int, float]:
    """Exact McNemar test of two methods scored on the same prompts.

    ``a_success[i]`` and ``b_success[i]`` are the outcomes of methods A and B on prompt
    ``i``. Returns ``(b01, b10, p_value)``: ``b01`` counts prompts where A failed and B
    succeeded, ``b10`` where A succeeded and B failed. Under the null hypothesis each
    discordant prompt is a fair coin, so the two-sided p-value is that of an exact binomial
    test of ``b01`` out of ``b01 + b10`` at 1/2. With no discordant prompts it is 1.
    """
    a = _as_bool_array(a_success, "a_success")
    b = _as_bool_array(b_success, "b_success")
    if a.shape != b.shape:
        raise PowersteerError(
            f"paired outcomes need the same prompts: got {a.size} and {b.size} outcomes"
        )
    b01 = int(np.sum(~a & b))
    b10 = int(np.sum(a & ~b))
    discordant = b01 + b10
    if discordant == 0:
        return b01, b10, 1.0
    # The binomial at 1/2 is symmetric, so the two-sided p is twice the smaller tail.
    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(b01, b10), discordant, 0.5)))
    return b01, b10, p_value


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float, float]:
    """Paired bootstrap of the mean difference ``a - b`` of continuous scores.

    Prompts are resampled with replacement, keeping each prompt's pair together. Returns
    ``(mean_diff, low, high, p_value)``: the observed mean of ``a[i] - b[i]``, a percentile
    interval at ``confidence``, and a two-sided p-value for a zero mean difference (the
    bootstrap distribution shifted to the null, with the +1 correction so it is never 0).
    """
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diffs.ndim != 1 or diffs.size == 0:
        raise PowersteerError("paired_bootstrap needs two equally long, non-empty 1-D sequences")
    if n_resamples < 1:
        raise PowersteerError(f"n_resamples={n_resamples} must be at least 1")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, diffs.size, size=(n_resamples, diffs.size))
    means = diffs[indices].mean(axis=1)
    observed = float(diffs.mean())
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-12))
    p_value = min(1.0, (extreme + 1) / (n_resamples + 1))
    return observed, float(low), float(high), p_value


def draws_bootstrap(
    a: Sequence[float] | np.ndarray,
    draws: Sequence[Sequence[float]] | np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float, float, float]:
    """Bootstrap of ``mean(a) - mean(draws)`` when B is a control drawn at random ``R`` times.

    ``a[i]`` is method A's outcome on prompt ``i``; ``draws[r][i]`` that of the control's
    ``r``-th independent draw on the same prompt. Each resample draws the prompts with
    replacement (keeping every prompt's outcomes together) *and* the ``R`` draws with
    replacement, so the interval and p-value count how much the control changes from draw
    to draw, which a paired test against a single draw treats as fixed. Returns
    ``(difference, low, high, p_value, standard_error)`` as :func:`paired_bootstrap`
    does, plus the bootstrap standard error. With ``R = 1`` the numbers equal
    :func:`paired_bootstrap`'s (same resampled prompts for the same ``seed``); with few
    draws resampling them understates their spread by a factor ``(R - 1) / R`` in variance.
    """
    values = np.asarray(a, dtype=np.float64)
    control = np.asarray(draws, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or control.ndim != 2 or control.shape[0] == 0:
        raise PowersteerError(
            "draws_bootstrap needs a non-empty 1-D a and a 2-D draws of shape (R, len(a))"
        )
    if control.shape[1] != values.size:
        raise PowersteerError(
            f"each draw needs an outcome on every prompt: {control.shape[1]} vs {values.size}"
        )
    if n_resamples < 1:
        raise PowersteerError(f"n_resamples={n_resamples} must be at least 1")
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, values.size, size=(n_resamples, values.size))
    n_draws = control.shape[0]
    picked = rng.integers(0, n_draws, size=(n_resamples, n_draws)) if n_draws > 1 else None
    a_means = values[prompts].mean(axis=1)
    draw_means = control[:, prompts].mean(axis=2)  # (R, resamples): each draw, each resample
    if picked is None:
        control_means = draw_means[0]
    else:
        control_means = np.take_along_axis(draw_means.T, picked, axis=1).mean(axis=1)
    differences = a_means - control_means
    observed = float(values.mean() - control.mean())
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    extreme = int(np.sum(np.abs(differences - observed) >= abs(observed) - 1e-12))
    p_value = min(1.0, (extreme + 1) / (n_resamples + 1))
    return observed, float(low), float(high), p_value, float(np.std(differences, ddof=1))


def minimum_detectable_from_standard_error(
    standard_error: float, alpha: float, power: float = 0.8
) -> float:
    """Smallest difference a two-sided test at ``alpha`` detects with probability ``power``
    when its estimate has ``standard_error``: ``(z_{1-alpha/2} + z_power) · se``."""
    _check_level(alpha, "alpha")
    _check_level(power, "power")
    if not math.isfinite(standard_error):
        return math.nan
    return float(stats.norm.ppf(1.0 - alpha / 2) + stats.norm.ppf(power)) * standard_error


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the ``j``-th smallest (0-based) of ``m`` is multiplied by ``m - j``;
    a running maximum keeps the adjusted values monotone, and they are capped at 1.
    Rejecting where the adjusted value is below ``alpha`` controls the family-wise error.
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return []
    if np.any((p < 0) | (p > 1) | np.isnan(p)):
        raise PowersteerError(f"p-values must lie in [0, 1], got {list(p_values)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted_sorted = np.maximum.accumulate(scaled)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return [float(x) for x in adjusted]


def mcnemar_minimum_detectable_difference(n: int, alpha: float, power: float = 0.8) -> float:
    """Smallest difference in paired success rates an exact two-sided McNemar test at
    level ``alpha`` detects with probability ``power`` over ``n`` paired prompts.

    It assumes the most favourable case, every discordant prompt going the same way: a
    difference ``d`` then makes each prompt discordant with probability ``d``, so the
    discordant count is Binomial(n, d), and ``D`` discordant prompts all one way give the
    p-value ``min(1, 2 · 0.5^D)`` of :func:`mcnemar_exact`. Discordance in both directions
    only adds noise, so this is a **lower bound**: a real comparison needs at least this
    difference, usually more. Returns NaN when no difference can be detected, which is
    when ``n`` is below the fewest discordant prompts that can reach ``alpha``.
    """
    _check_level(alpha, "alpha")
    _check_level(power, "power")
    if n < 0:
        raise PowersteerError(f"n={n} must not be negative")
    needed = _fewest_discordant_to_reject(alpha)
    if n < needed:
        return math.nan
    # P(Binomial(n, d) >= k) is the regularised incomplete beta I_d(k, n - k + 1), which
    # rises with d, so the d where it reaches ``power`` is that Beta's quantile.
    return float(stats.beta.ppf(power, needed, n - needed + 1))


def bootstrap_minimum_detectable_difference(
    differences: Sequence[float] | np.ndarray, alpha: float, power: float = 0.8
) -> float:
    """Smallest mean paired difference a two-sided test at level ``alpha`` detects with
    probability ``power``: ``(z_{1-alpha/2} + z_power) · sd(differences) / sqrt(n)``.

    This is the normal approximation to the sampling distribution of the mean that the
    paired bootstrap (:func:`paired_bootstrap`) resamples, with the observed standard
    deviation (``ddof=1``) standing in for the true one; it is approximate, and optimistic
    for small or heavy-tailed samples. NaN with fewer than two differences.
    """
    _check_level(alpha, "alpha")
    _check_level(power, "power")
    diffs = np.asarray(differences, dtype=np.float64)
    if diffs.ndim != 1:
        raise PowersteerError("differences must be a 1-D sequence")
    if diffs.size < 2:
        return math.nan
    z_sum = float(stats.norm.ppf(1.0 - alpha / 2) + stats.norm.ppf(power))
    return z_sum * float(np.std(diffs, ddof=1)) / math.sqrt(diffs.size)


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float:
    """Cohen's kappa of two raters' labels of the same items: ``(p_o - p_e) / (1 - p_e)``,
    with ``p_o`` the observed agreement and ``p_e`` the agreement expected from each
    rater's label frequencies. NaN when ``p_e = 1`` (both give one label to every item)."""
    first, second = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if first.shape != second.shape or first.ndim != 1 or first.size == 0:
        raise PowersteerError("cohen_kappa needs two equally long, non-empty 1-D label lists")
    observed = float(np.mean(first == second))
    labels = set(first.tolist()) | set(second.tolist())
    expected = sum(float(np.mean(first == x)) * float(np.mean(second == x)) for x in labels)
    if expected >= 1.0:
        return math.nan
    return (observed - expected) / (1.0 - expected)


def clustered_kappa_interval(
    a: Sequence[object],
    b: Sequence[object],
    clusters: Sequence[object],
    n_resamples: int = 2_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Cohen's kappa and a percentile bootstrap interval that resamples whole clusters.

    The rows of one prompt (its outputs at many cells) are not independent, so prompts --
    ``clusters`` -- are drawn with replacement and all their rows kept together. Returns
    ``(kappa, low, high)``; resamples where kappa is undefined are left out (NaN bounds
    when all are).
    """
    first, second = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    groups = np.asarray(clusters, dtype=object)
    if not first.shape == second.shape == groups.shape:
        raise PowersteerError("clustered_kappa_interval needs labels and clusters of one length")
    _check_level(confidence, "confidence")
    kappa = cohen_kappa(first, second)
    names = list(dict.fromkeys(groups.tolist()))
    members = [np.flatnonzero(groups == name) for name in names]
    rng = np.random.default_rng(seed)
    draws = []
    for chosen in rng.integers(0, len(names), size=(n_resamples, len(names))):
        rows = np.concatenate([members[i] for i in chosen])
        value = cohen_kappa(first[rows], second[rows])
        if not math.isnan(value):
            draws.append(value)
    if not draws:
        return kappa, math.nan, math.nan
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return kappa, float(low), float(high)


def _fewest_discordant_to_reject(alpha: float) -> int:
    # The smallest D with min(1, 2 · 0.5^D) <= alpha, counted rather than taken from a
    # logarithm so a level that is exactly a power of two is not lost to rounding.
    discordant = 0
    while min(1.0, 2.0 * 0.5**discordant) > alpha:
        discordant += 1
    return discordant


def _check_level(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise PowersteerError(f"{name}={value} must lie strictly between 0 and 1")


def _as_bool_array(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise PowersteerError(f"{name} must be a 1-D sequence of booleans")
    return array.astype(bool)
