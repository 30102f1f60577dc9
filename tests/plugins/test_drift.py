"""The drift statistics equal scipy's reference implementations on random data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from asgard.monitoring import drift

TOLERANCE = 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_numeric_statistics_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(0, 1, 5_000)
    # Ties, a shift, a different scale and values beyond the reference's range.
    current = np.round(rng.normal(0.3, 1.4, 3_000 + seed * 777), 2)
    ref = drift.NumericReference.from_values(reference)

    result = drift.numeric_statistics(current, ref)

    ks = stats.ks_2samp(reference, current, method="asymp")
    assert result.metrics["ks_statistic"] == pytest.approx(ks.statistic, abs=TOLERANCE)
    assert result.metrics["ks_p_value"] == pytest.approx(ks.pvalue, abs=TOLERANCE)
    assert result.metrics["wasserstein"] == pytest.approx(stats.wasserstein_distance(reference, current), abs=TOLERANCE)
    expected = np.histogram(reference, bins=ref.bin_edges)[0] / len(reference)
    edges = np.concatenate(([-np.inf], ref.bin_edges[1:-1], [np.inf]))
    actual = np.histogram(current, bins=edges)[0] / len(current)
    assert result.metrics["js_divergence"] == pytest.approx(jensenshannon(expected, actual, base=2), abs=TOLERANCE)
    naive_psi = sum(
        (max(a, drift.PSI_FLOOR) - max(e, drift.PSI_FLOOR)) * np.log(max(a, drift.PSI_FLOOR) / max(e, drift.PSI_FLOOR))
        for e, a in zip(expected, actual, strict=True)
    )
    assert result.metrics["psi"] == pytest.approx(naive_psi, abs=TOLERANCE)
    assert result.drift_score == pytest.approx(stats.wasserstein_distance(reference, current) / reference.std(ddof=1))
    outside = ((current < reference.min()) | (current > reference.max())).mean()
    assert result.metrics["out_of_range_rate"] == pytest.approx(outside, abs=TOLERANCE)


def test_numeric_statistics_count_missing_values_apart():
    ref = drift.NumericReference.from_values(np.arange(1000, dtype=float))
    values = np.concatenate((np.arange(900, dtype=float), np.full(100, np.nan)))

    result = drift.numeric_statistics(values, ref)

    assert result.missing_rate == pytest.approx(0.1)
    assert result.metrics["ks_statistic"] == pytest.approx(stats.ks_2samp(np.arange(1000), np.arange(900)).statistic)


@pytest.mark.parametrize("seed", range(3))
def test_categorical_statistics_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    categories = ["a", "b", "c", "d", "e"]
    frequencies = rng.dirichlet(np.ones(5))
    ref = drift.CategoricalReference.from_frequencies(dict(zip(categories, frequencies, strict=True)))
    values = pd.Series(rng.choice(categories, size=4_000, p=rng.dirichlet(np.ones(5))), dtype=object)

    result = drift.categorical_statistics(values, ref)

    observed = values.value_counts().reindex(categories, fill_value=0).to_numpy()
    chi = stats.chisquare(observed, frequencies / frequencies.sum() * observed.sum())
    assert result.metrics["chi_square"] == pytest.approx(chi.statistic, abs=TOLERANCE)
    assert result.metrics["chi_square_p_value"] == pytest.approx(chi.pvalue, abs=TOLERANCE)
    expected = np.append(frequencies, 0.0)
    assert result.metrics["js_divergence"] == pytest.approx(
        jensenshannon(expected, np.append(observed, 0) / observed.sum(), base=2), abs=TOLERANCE
    )
    assert result.drift_score == result.metrics["js_divergence"]


def test_unseen_categories_are_drift_and_missing_values_are_not_categories():
    ref = drift.CategoricalReference.from_frequencies({"basic": 0.5, "premium": 0.5})
    values = pd.Series(["basic"] * 40 + ["premium"] * 40 + ["enterprise"] * 10 + [None] * 10, dtype=object)

    result = drift.categorical_statistics(values, ref)

    assert result.rows == 100
    assert result.missing_rate == pytest.approx(0.1)
    assert result.metrics["unseen_rate"] == pytest.approx(10 / 90)
    assert result.current["frequencies"]["<unseen>"] == pytest.approx(10 / 90)
    assert result.drift_score > 0.1
