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


def checked_rollout(rollout: dict[str, Any]) -> dict[str, Any]:
    """A promotion's rollout as deploy_model's Params take it: each value against its Param's schema, finite,
    and the strategy's own limits only (an InputError naming what is wrong). Tags are read through it too."""
    import math

    import jsonschema

    from asgard.core.errors import InputError
    from asgard.deploy.params import deploy_model_params  # Airflow's Params: only the deploy side calls this

    if not isinstance(rollout, dict) or set(rollout) - {"strategy", *ROLLOUT_KEYS}:
        raise InputError(f"a rollout names a strategy and {', '.join(ROLLOUT_KEYS)} only, not {rollout!r}")
    params = deploy_model_params()
    for key, value in rollout.items():
        try:
            jsonschema.validate(value, params[key].schema)
        except jsonschema.ValidationError as error:
            raise InputError(f"the rollout's {key}: {error.message}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"the rollout's {key} must be a finite number, not {value}")
    Rollout.from_params(rollout)
    return {key: value for key, value in rollout.items() if value is not None}


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
