"""How a new version meets live traffic before it serves alone: replace, canary or shadow.

``replace`` is the verified switch every target does. ``canary`` sends a share of the live
prediction requests to the new version (callers get its answers); ``shadow`` mirrors a share to it
and answers every caller from the stable version. Either way the router counts, per side, requests,
server errors and latencies over the trial (``TrafficWindow``), and ``decide`` turns those counts
into a verdict against the limits: a breach rolls the new version back, a pass promotes it to all
traffic. A shadow's answers are also compared by the kind of model (``asgard_serving.agreement``): a
classifier by the share of rows whose class agrees (``min_agreement``), a regressor by how far its
predictions are from the serving ones relative to their spread (``max_difference``). The decision
and its figures are tagged on the version (``deploy.canary.*``, ``deploy.shadow.*``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgard.core.xcom import XComRecord

REPLACE, CANARY, SHADOW = "replace", "canary", "shadow"
STRATEGIES = (REPLACE, CANARY, SHADOW)
# The serving bundle's ``model_type`` (``/metadata``), which decides how a shadow is compared.
CLASSIFICATION, REGRESSION = "classification", "regression"


@dataclass(frozen=True)
class Rollout(XComRecord):
    """A deploy's strategy and, for a trial (canary or shadow), its share of traffic, window and limits.

    The window closes once the new version has answered ``min_requests`` requests, or after
    ``duration`` seconds (with ``min_requests`` 0, the window is the duration). Too little traffic in
    ``duration`` is a breach: a version nobody tried is not promoted.

    A shadow's comparison limit depends on the model: ``min_agreement`` (a share of rows, not enforced
    when None) for a classifier, ``max_difference`` for a regressor — the p95 absolute difference of the
    two versions' predictions in units of the serving version's standard deviation in the window. The
    default 1 lets a retrained model move but not shift, rescale or break (a constant answer is ~2).
    """

    strategy: str = REPLACE
    percent: int = 10
    min_requests: int = 100
    duration: float = 300.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    p99_tolerance_ms: float = 50.0
    min_agreement: float | None = None
    max_difference: float = 1.0

    @property
    def trial(self) -> bool:
        return self.strategy != REPLACE

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Rollout:
        # Imported here: the router reads this module, and it must start without Airflow.
        from asgard.core.errors import InputError

        strategy = params.get("strategy") or REPLACE
        if strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        given = {key: params[key] for key in ROLLOUT_KEYS if params.get(key) is not None}
        rollout = cls(strategy=strategy, **given)
        for shadow_only in ("min_agreement", "max_difference"):
            if shadow_only in given and strategy != SHADOW:
                raise InputError(
                    f"{shadow_only} applies to the shadow strategy only (a canary's callers see its answers)"
                )
        return rollout


REPLACING = Rollout()
ROLLOUT_KEYS = (
    "percent",
    "min_requests",
    "duration",
    "max_error_rate",
    "max_p99_ratio",
    "p99_tolerance_ms",
    "min_agreement",
    "max_difference",
)


@dataclass(frozen=True)
class Verdict:
    """``state``: ``watching`` (the window is open), ``pass`` or ``breach``; ``reason`` says which limit."""

    state: str
    reason: str
    figures: dict[str, Any]


def decide(rollout: Rollout, traffic: dict[str, Any], elapsed: float) -> Verdict:
    """The trial's verdict from the router's counts ``traffic`` (``TrafficWindow.summary``) after ``elapsed`` s."""
    tried, stable = traffic["candidate_side"], traffic["stable"]
    requests, errors = tried["requests"], tried["errors"]
    figures = _figures(rollout, traffic, elapsed)

    def breach(limit: str, why: str) -> Verdict:
        reason = f"{limit}: {why}"
        return Verdict("breach", reason, {**figures, "decision": "rolled_back", "limit": limit, "reason": reason})

    allowed = rollout.max_error_rate * rollout.min_requests
    if rollout.min_requests and errors > allowed:
        # More errors than the whole window may hold: no later request can bring the rate back.
        return breach(
            "max_error_rate",
            f"{errors} of the new version's first {requests} requests failed, more than "
            f"{rollout.max_error_rate:.2%} of {rollout.min_requests}",
        )
    window_full = rollout.min_requests and requests >= rollout.min_requests
    if not window_full and elapsed < rollout.duration:
        return Verdict("watching", f"{requests} request(s) so far", figures)
    if requests < max(rollout.min_requests, 1):
        return breach(
            "min_requests",
            f"only {requests} request(s) reached the new version in {rollout.duration:.0f}s "
            f"(needs {max(rollout.min_requests, 1)}): a version live traffic has not tried is not promoted",
        )
    if errors / requests > rollout.max_error_rate:
        return breach(
            "max_error_rate",
            f"{errors} of {requests} requests failed ({errors / requests:.2%} > {rollout.max_error_rate:.2%})",
        )
    ratio = figures.get("p99_ratio")
    # A p99 over a window of tens of requests is its slowest one or two: at a few milliseconds a
    # scheduler hiccup multiplies it. A latency regression is one a caller feels, slower by a ratio
    # *and* by more than the tolerance (as absolute latency thresholds do in Flagger's analysis).
    if ratio is not None and ratio > rollout.max_p99_ratio:
        slower_ms = tried["p99_ms"] - stable["p99_ms"]
        if slower_ms > rollout.p99_tolerance_ms:
            return breach(
                "max_p99_ratio",
                f"p99 {tried['p99_ms']:.1f} ms against the stable version's {stable['p99_ms']:.1f} ms "
                f"({ratio:.2f}x > {rollout.max_p99_ratio:g}x, {slower_ms:.1f} ms slower > the "
                f"{rollout.p99_tolerance_ms:g} ms tolerance)",
            )
    if rollout.strategy == SHADOW and figures["model_type"] == REGRESSION:
        relative = figures["relative_p95_abs_difference"]
        if relative is None or relative > rollout.max_difference:
            return breach("max_difference", _difference(figures, rollout))
    # Only a classifier's shadow reports an agreement: for a regressor, max_difference decides.
    agreement, limit = figures.get("agreement"), rollout.min_agreement
    if "agreement" in figures and limit is not None and (agreement is None or agreement < limit):
        shown = "no comparable answers" if agreement is None else f"{agreement:.2%}"
        return breach("min_agreement", f"agreement {shown} < {rollout.min_agreement:.2%}")
    reason = f"within every limit over {requests} requests"
    if rollout.strategy == SHADOW and figures["model_type"] == REGRESSION:
        reason += f" ({_difference(figures, rollout)})"
    return Verdict("pass", reason, {**figures, "decision": "promoted", "reason": reason})


def _figures(rollout: Rollout, traffic: dict[str, Any], elapsed: float) -> dict[str, Any]:
    tried, stable = traffic["candidate_side"], traffic["stable"]
    figures: dict[str, Any] = {
        "percent": rollout.percent,
        "seconds": round(elapsed, 1),
        "requests": tried["requests"],
        "errors": tried["errors"],
        "error_rate": tried["error_rate"],
        "p99_ms": tried["p99_ms"],
        "stable_requests": stable["requests"],
        "stable_p99_ms": stable["p99_ms"],
        "p99_ratio": (round(tried["p99_ms"] / stable["p99_ms"], 3) if tried["p99_ms"] and stable["p99_ms"] else None),
    }
    if rollout.strategy == SHADOW:
        # Only the measures of the model's kind: an agreement of regression floats means nothing.
        kind = traffic.get("model_type") or CLASSIFICATION
        figures.update(model_type=kind, compared_rows=traffic.get("compared_rows", 0))
        if kind == REGRESSION:
            figures.update(measure="relative_p95_abs_difference", max_difference=rollout.max_difference)
            figures.update({key: _short(traffic.get(key)) for key in REGRESSION_FIGURES})
        else:
            figures.update(measure="agreement", agreement=traffic.get("agreement"))
            figures["mean_abs_probability_diff"] = traffic.get("mean_abs_probability_diff")
        figures["mirrors_dropped"] = traffic.get("mirrors_dropped", 0)
    return figures


REGRESSION_FIGURES = (
    "difference_rows",
    "mean_abs_difference",
    "p95_abs_difference",
    "stable_std",
    "relative_mean_abs_difference",
    "relative_p95_abs_difference",
)


def _short(value: Any) -> Any:
    """Six significant digits, as the reasons show them: a float noise stays visible (1e-09, not 0)."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _difference(figures: dict[str, Any], rollout: Rollout) -> str:
    """A regression shadow's difference, named and put against ``max_difference``."""
    p95, std, relative = figures["p95_abs_difference"], figures["stable_std"], figures["relative_p95_abs_difference"]
    if not figures["difference_rows"] or p95 is None:
        return (
            f"no numeric predictions compared (of {figures['compared_rows']} row(s)): the difference "
            "of a regression shadow could not be measured"
        )
    if relative is None:
        return (
            f"p95 absolute difference {p95:g} while the serving version's predictions did not vary "
            "(std 0): no spread to measure it against"
        )
    sign = ">" if relative > rollout.max_difference else "<="
    return (
        f"p95 absolute difference {p95:g} = {relative:g} x the serving version's std {std:g} "
        f"({sign} {rollout.max_difference:g}); mean absolute difference {figures['mean_abs_difference']:g} "
        f"= {figures['relative_mean_abs_difference']:g} x std, over {figures['difference_rows']} rows"
    )


def watch(
    rollout: Rollout,
    traffic: Callable[[], dict[str, Any] | None],
    *,
    progress: Callable[[str], None],
    poll: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Ask ``traffic`` (the router's window for this trial) every ``poll`` s until the verdict is in."""
    started, said = clock(), 0.0
    while True:
        window = traffic()
        elapsed = clock() - started
        verdict = decide(rollout, window or _empty(rollout), elapsed)
        if verdict.state != "watching":
            return verdict
        if elapsed - said >= 10:
            said = elapsed
            progress(f"{rollout.strategy}: {verdict.reason} after {elapsed:.0f}s")
        sleep(poll)


def _empty(rollout: Rollout) -> dict[str, Any]:
    nothing = {"requests": 0, "errors": 0, "error_rate": None, "p99_ms": None}
    return {
        "stable": nothing,
        "candidate_side": nothing,
        "model_type": None,
        "compared_rows": 0,
        "agreement": None,
        "mean_abs_probability_diff": None,
        "mirrors_dropped": 0,
    }


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
