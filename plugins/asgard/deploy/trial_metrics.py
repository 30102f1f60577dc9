"""The trial's figures read from the serving image's counters: a shadow's comparison
(``asgard_serving.agreement``'s counters, one router window's or several pods' summed) and, on
Kubernetes, each side's requests, errors and p99 from the pods' Prometheus exposition."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from asgard.deploy.strategies import CLASSIFICATION, REGRESSION

# --- a shadow's answers compared (``asgard_serving.agreement``'s counters) ------------------------------

COMPARED = "asgard_shadow"
DIFFERENCE_BUCKETS = f"{COMPARED}_abs_difference_rows{{"


def comparison(counters: dict[str, float], model_type: str | None = None) -> dict[str, Any]:
    """A shadow's comparison figures from ``Agreement.counters`` (one router window's, or several pods' summed).

    ``measure`` names what decides for the model type: ``agreement`` for a classifier, the
    ``relative_p95_abs_difference`` for a regressor (the p95 absolute difference over the standard
    deviation of the serving version's predictions). Without ``model_type``, a window whose serving
    predictions had fractions and no probabilities is taken for a regressor.
    """

    def count(name: str) -> float:
        return counters.get(f"{COMPARED}_{name}", 0)

    compared, paired = int(count("compared_rows_total")), int(count("difference_rows_total"))
    if model_type not in (CLASSIFICATION, REGRESSION):
        fractional = count("fractional_rows_total") > 0 and not count("probability_values_total")
        model_type = REGRESSION if fractional else CLASSIFICATION
    if model_type == CLASSIFICATION:
        values = count("probability_values_total")
        return {
            "model_type": model_type,
            "measure": "agreement",
            "compared_rows": compared,
            "agreement": count("agreed_rows_total") / compared if compared else None,
            "mean_abs_probability_diff": count("probability_abs_diff_sum") / values if values else None,
        }
    mean = count("abs_difference_sum") / paired if paired else None
    p95 = _histogram_quantile(counters, 0.95)
    std = None
    if paired:
        average = count("stable_prediction_sum") / paired
        std = math.sqrt(max(count("stable_prediction_square_sum") / paired - average * average, 0.0))
    return {
        "model_type": model_type,
        "measure": "relative_p95_abs_difference",
        "compared_rows": compared,
        "difference_rows": paired,
        "mean_abs_difference": mean,
        "p95_abs_difference": p95,
        "stable_std": std,
        "relative_mean_abs_difference": _relative(mean, std),
        "relative_p95_abs_difference": _relative(p95, std),
    }


def served_model_type(call: Callable[[str, str, Any], tuple[int, str]]) -> str | None:
    """The ``model_type`` a version reports at ``/metadata`` through ``call`` (``asgard.serving.checks.Call``);
    None when it cannot tell (the comparison then goes by the answers' shape)."""
    try:
        status, text = call("GET", "/metadata", None)
        kind = json.loads(text).get("model_type") if status == 200 else None
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in (CLASSIFICATION, REGRESSION) else None


def _histogram_quantile(counters: dict[str, float], q: float) -> float | None:
    """The ``q`` quantile of the absolute differences, linear within the bucket it falls in (as
    Prometheus' ``histogram_quantile``); exact zeros are a bucket of their own, so equal answers read 0."""
    buckets = []
    for name, rows in counters.items():
        if name.startswith(DIFFERENCE_BUCKETS) and rows > 0:
            labels = dict(part.split("=", 1) for part in name[len(DIFFERENCE_BUCKETS) : -1].split(","))
            buckets.append((float(labels["le"].strip('"')), float(labels["gt"].strip('"')), rows))
    total = sum(rows for *_, rows in buckets)
    if not total:
        return None
    rank, below = q * total, 0.0
    for upper, lower, rows in sorted(buckets):
        if below + rows >= rank:
            return lower + (upper - lower) * (rank - below) / rows
        below += rows
    return max(upper for upper, *_ in buckets)


def _relative(value: float | None, spread: float | None) -> float | None:
    """``value`` in units of the serving version's spread; with no spread, 0 only when there is no difference."""
    if value is None or spread is None:
        return None
    if spread > 0:
        return value / spread
    return 0.0 if value == 0 else None


# --- counts read from pods (the kubernetes target, which has no router to count at) ------------------


def parse_metrics(exposition: str, prefix: str = "asgard_prediction") -> dict[str, Any]:
    """A serving pod's ``/metrics`` (``asgard_serving.metrics``): ``prefix``'s requests, server errors and
    latency buckets, and every other counter by name with its labels (``asgard_shadow_agreed_rows_total 12``,
    ``asgard_shadow_abs_difference_rows{gt="0.8",le="1"} 3``)."""
    requests = errors = 0.0
    buckets: dict[str, float] = {}
    counters: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith(f"{prefix}_requests_total{{"):
            value = float(line.rsplit(" ", 1)[1])
            requests += value
            if 'code="5xx"' in line:
                errors += value
        elif line.startswith(f"{prefix}_seconds_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
        elif line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            counters[name] = float(value)
    return {"requests": requests, "errors": errors, "buckets": buckets, "counters": counters}


def combine(counts: list[dict[str, Any]], minus: dict[str, Any] | None = None) -> dict[str, Any]:
    """Several pods' counts summed, less ``minus`` (what they had counted when the trial began)."""
    total: dict[str, Any] = {"requests": 0.0, "errors": 0.0, "buckets": {}, "counters": {}}
    for one, sign in [*((one, 1) for one in counts), *([(minus, -1)] if minus else [])]:
        total["requests"] += sign * one["requests"]
        total["errors"] += sign * one["errors"]
        for group in ("buckets", "counters"):
            for name, value in one.get(group, {}).items():
                total[group][name] = total[group].get(name, 0.0) + sign * value
    return total


def side_summary(counts: dict[str, Any]) -> dict[str, Any]:
    """``Side.summary``'s shape from pod counts: p99 read from the histogram as Prometheus'
    ``histogram_quantile`` does (linear within the bucket it falls in)."""
    requests, errors = int(counts["requests"]), int(counts["errors"])
    bounds = sorted(((float(bound), value) for bound, value in counts["buckets"].items()), key=lambda pair: pair[0])
    p99 = None
    if bounds and bounds[-1][1] > 0:
        rank, lower, below = 0.99 * bounds[-1][1], 0.0, 0.0
        for bound, cumulative in bounds:
            if cumulative >= rank:
                if bound == float("inf"):
                    p99 = lower
                else:
                    within = cumulative - below
                    p99 = lower + (bound - lower) * ((rank - below) / within if within else 1.0)
                break
            lower, below = bound, cumulative
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
    }
