"""Drift statistics, vectorised: one sort per numeric column, one bincount per categorical column.

The reference side comes from what training logged (``reference/profile.json`` and a sorted
reference sample), so a monitoring window only pays for its own rows:

* numeric: the window's column is sorted once; the bin counts for PSI and Jensen-Shannon are
  ``searchsorted`` against the training decile edges, and the two empirical CDFs that
  Kolmogorov-Smirnov and Wasserstein both need are evaluated once on the merged values;
* categorical: values are coded against the training categories and counted with ``bincount``;
  PSI, Jensen-Shannon and chi-square come from those counts.

Each statistic is defined as scipy defines it (``ks_2samp``'s statistic, ``wasserstein_distance``,
``spatial.distance.jensenshannon`` with base 2, ``chisquare``); the tests hold them to 1e-9.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Empty bins would make PSI infinite: proportions are floored at this (the usual convention).
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class NumericReference:
    """A numeric feature at training time: its decile edges and counts, and a sorted sample."""

    bin_edges: np.ndarray
    bin_counts: np.ndarray
    sorted_sample: np.ndarray
    std: float
    minimum: float
    maximum: float

    @classmethod
    def from_values(cls, values: np.ndarray, *, bins: int = 10) -> NumericReference:
        present = np.sort(values[np.isfinite(values)])
        if not len(present):
            raise ValueError("a numeric reference needs at least one value")
        edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)))
        counts = np.histogram(present, bins=edges)[0] if len(edges) > 1 else np.array([len(present)])
        std = float(present.std(ddof=1)) if len(present) > 1 else 0.0
        return cls(edges, counts, present, std, float(present[0]), float(present[-1]))


@dataclass(frozen=True)
class CategoricalReference:
    """A categorical feature at training time: its categories and their frequencies."""

    categories: list[str]
    frequencies: np.ndarray

    @classmethod
    def from_frequencies(cls, frequencies: dict[str, float]) -> CategoricalReference:
        return cls(list(frequencies), np.asarray(list(frequencies.values()), dtype=float))


@dataclass
class ColumnStatistics:
    """What one column of a window looks like next to its reference."""

    kind: str
    rows: int
    missing_rate: float
    drift_score: float | None = None  # numeric: Wasserstein / reference std; categorical: JS distance
    # The test's p-value (numeric: KS, categorical: chi-square): a large score on a sample too small or
    # too noisy to tell the distributions apart is not drift.
    p_value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    current: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- numeric
def bin_proportions(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Proportions of sorted values in the reference bins; values beyond the edges go to the outer bins."""
    if len(edges) < 2:
        return np.ones(1)
    inner = edges[1:-1]
    cuts = np.searchsorted(sorted_values, inner, side="left")
    counts = np.diff(np.concatenate(([0], cuts, [len(sorted_values)])))
    return counts / max(len(sorted_values), 1)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    expected = np.maximum(reference, PSI_FLOOR)
    actual = np.maximum(current, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (0 = same, 1 = disjoint), as ``scipy.spatial.distance.jensenshannon``."""
    p = reference / reference.sum()
    q = current / current.sum()
    m = (p + q) / 2.0
    divergence = (_relative_entropy(p, m) + _relative_entropy(q, m)) / 2.0
    return float(np.sqrt(max(divergence, 0.0) / np.log(2.0)))


def _relative_entropy(p: np.ndarray, m: np.ndarray) -> float:
    present = p > 0
    return float(np.sum(p[present] * np.log(p[present] / m[present])))


def ks_and_wasserstein(reference_sorted: np.ndarray, current_sorted: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and 1-Wasserstein distance from the two empirical CDFs, evaluated once.

    Both are functions of the CDFs at the distinct merged values: KS is their largest gap, Wasserstein
    the area between them (as ``scipy.stats.ks_2samp`` and ``scipy.stats.wasserstein_distance``).
    The merge of two sorted runs is linear; at each distinct value, the count of all values up to it
    is its position, so only the (small) reference sample is searched.
    """
    merged = np.concatenate((reference_sorted, current_sorted))
    merged.sort(kind="stable")  # two sorted runs: a merge, not a full sort
    last_of_value = np.empty(len(merged), dtype=bool)
    np.not_equal(merged[1:], merged[:-1], out=last_of_value[:-1])
    last_of_value[-1] = True
    ends = np.flatnonzero(last_of_value)
    values = merged[ends]
    reference_counts = np.searchsorted(reference_sorted, values, side="right")
    current_counts = ends + 1 - reference_counts
    gaps = np.abs(reference_counts / len(reference_sorted) - current_counts / len(current_sorted))
    return float(gaps.max()), float(np.dot(gaps[:-1], np.diff(values)))


def ks_p_value(statistic: float, reference_rows: int, current_rows: int) -> float:
    """Two-sided asymptotic p-value of the KS statistic, as ``ks_2samp(..., method="asymp")``."""
    from scipy.stats import kstwo

    effective = round(reference_rows * current_rows / (reference_rows + current_rows))
    return float(min(1.0, max(0.0, kstwo.sf(statistic, effective))))


def numeric_statistics(values: np.ndarray, reference: NumericReference) -> ColumnStatistics:
    """Drift and range of a numeric window. NaN is missing; ±inf is a value out of range, left out of the
    distributions (it would make Wasserstein and the drift score infinite, and say nothing more)."""
    missing = np.isnan(values)
    stats = ColumnStatistics("numeric", len(values), float(missing.mean()) if len(values) else 0.0)
    given = np.sort(values[~missing])
    present = given[np.isfinite(given)]
    if not len(present):
        if len(given):  # only infinities: all out of range, no distribution to compare
            stats.metrics = {"out_of_range_rate": 1.0}
        return stats
    proportions = bin_proportions(present, reference.bin_edges)
    expected = reference.bin_counts / reference.bin_counts.sum()
    ks, wasserstein = ks_and_wasserstein(reference.sorted_sample, present)
    p_value = ks_p_value(ks, len(reference.sorted_sample), len(present))
    outside = np.searchsorted(given, reference.minimum, side="left") + (
        len(given) - np.searchsorted(given, reference.maximum, side="right")
    )
    stats.metrics = {
        "psi": psi(expected, proportions),
        "js_divergence": jensen_shannon(expected, proportions),
        "ks_statistic": ks,
        "ks_p_value": p_value,
        "wasserstein": wasserstein,
        "out_of_range_rate": float(outside / len(given)),
    }
    stats.drift_score = wasserstein / reference.std if reference.std > 0 else float(ks)
    stats.p_value = p_value
    stats.metrics["drift_score"] = stats.drift_score
    stats.current = {
        "mean": float(present.mean()),
        "std": float(present.std(ddof=1)) if len(present) > 1 else 0.0,
        "bin_proportions": proportions.tolist(),
    }
    return stats


# --------------------------------------------------------------------------- categorical
def category_counts(values: Any, categories: list[str]) -> tuple[np.ndarray, int, int]:
    """Counts per reference category, plus how many values were unseen and how many missing.

    One hash pass over the values (``pd.factorize``); only the distinct values are then matched
    to the reference's categories (as strings, which is how the profile records them).
    """
    import pandas as pd

    codes, distinct = pd.factorize(pd.Series(values, copy=False), use_na_sentinel=True)
    per_distinct = np.bincount(codes + 1, minlength=len(distinct) + 1)  # code -1: missing
    position = {category: index for index, category in enumerate(categories)}
    counts = np.zeros(len(categories), dtype=np.int64)
    unseen = 0
    for value, count in zip(distinct, per_distinct[1:], strict=True):
        index = position.get(str(value))
        if index is None:
            unseen += int(count)
        else:
            counts[index] += count
    return counts, unseen, int(per_distinct[0])


def chi_square(observed: np.ndarray, expected_frequencies: np.ndarray) -> tuple[float, float]:
    """Pearson's chi-square of observed counts against the reference frequencies, and its p-value."""
    from scipy.special import chdtrc

    expected = expected_frequencies / expected_frequencies.sum() * observed.sum()
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, float(chdtrc(len(observed) - 1, statistic))


def categorical_statistics(values: Any, reference: CategoricalReference) -> ColumnStatistics:
    counts, unseen, missing = category_counts(values, reference.categories)
    rows = int(counts.sum()) + unseen + missing
    stats = ColumnStatistics("categorical", rows, missing / rows if rows else 0.0)
    present = int(counts.sum()) + unseen
    if not present:
        return stats
    # Unseen categories are one more bin the reference never had: they count as drift.
    current = np.append(counts, unseen) / present
    expected = np.append(reference.frequencies / reference.frequencies.sum(), 0.0)
    statistic, p_value = chi_square(counts, reference.frequencies) if counts.sum() else (0.0, 1.0)
    stats.metrics = {
        "psi": psi(expected, current),
        "js_divergence": jensen_shannon(expected, current),
        "chi_square": statistic,
        "chi_square_p_value": p_value,
        "unseen_rate": unseen / present,
    }
    stats.drift_score = stats.metrics["js_divergence"]
    # Unseen categories have no expected count for chi-square; any share of them is a significant change.
    stats.p_value = 0.0 if unseen else p_value
    stats.metrics["drift_score"] = stats.drift_score
    stats.current = {"frequencies": dict(zip([*reference.categories, "<unseen>"], current.tolist(), strict=True))}
    return stats
