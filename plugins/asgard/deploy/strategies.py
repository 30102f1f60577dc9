"""How a new version meets live traffic before it serves alone: replace, canary or shadow.

``replace`` is the verified switch every target does. ``canary`` sends a share of the live
prediction requests to the new version (callers get its answers); ``shadow`` mirrors a share to it
and answers every caller from the stable version. Either way the router counts, per side, requests,
server errors and latencies over the trial (``TrafficWindow``), and ``decide`` turns those counts
into a verdict against the limits: a breach rolls the new version back, a pass promotes it to all
traffic. The decision and its figures are tagged on the version (``deploy.canary.*``,
``deploy.shadow.*``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgard.core.xcom import XComRecord

REPLACE, CANARY, SHADOW = "replace", "canary", "shadow"
STRATEGIES = (REPLACE, CANARY, SHADOW)


@dataclass(frozen=True)
class Rollout(XComRecord):
    """A deploy's strategy and, for a trial (canary or shadow), its share of traffic, window and limits.

    The window closes once the new version has answered ``min_requests`` requests, or after
    ``duration`` seconds (with ``min_requests`` 0, the window is the duration). Too little traffic in
    ``duration`` is a breach: a version nobody tried is not promoted.
    """

    strategy: str = REPLACE
    percent: int = 10
    min_requests: int = 100
    duration: float = 300.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 2.0
    min_agreement: float | None = None

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
        if rollout.min_agreement is not None and strategy != SHADOW:
            raise InputError("min_agreement applies to the shadow strategy only (a canary's callers see its answers)")
        return rollout


REPLACING = Rollout()
ROLLOUT_KEYS = ("percent", "min_requests", "duration", "max_error_rate", "max_p99_ratio", "min_agreement")


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
    if ratio is not None and ratio > rollout.max_p99_ratio:
        return breach(
            "max_p99_ratio",
            f"p99 {tried['p99_ms']:.1f} ms against the stable version's {stable['p99_ms']:.1f} ms "
            f"({ratio:.2f}x > {rollout.max_p99_ratio:g}x)",
        )
    agreement = traffic.get("agreement")
    if rollout.min_agreement is not None and (agreement is None or agreement < rollout.min_agreement):
        shown = "no comparable answers" if agreement is None else f"{agreement:.2%}"
        return breach("min_agreement", f"agreement {shown} < {rollout.min_agreement:.2%}")
    reason = f"within every limit over {requests} requests"
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
        figures.update(
            compared_rows=traffic["compared_rows"],
            agreement=traffic["agreement"],
            mean_abs_probability_diff=traffic["mean_abs_probability_diff"],
            mirrors_dropped=traffic["mirrors_dropped"],
        )
    return figures


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
        "compared_rows": 0,
        "agreement": None,
        "mean_abs_probability_diff": None,
        "mirrors_dropped": 0,
    }


# --- counts read from pods (the kubernetes target, which has no router to count at) ------------------


def parse_metrics(exposition: str, prefix: str = "asgard_prediction") -> dict[str, Any]:
    """A serving pod's ``/metrics`` (``asgard_serving.metrics``): ``prefix``'s requests, server errors and
    latency buckets, and every plain counter (``asgard_shadow_agreed_rows_total 12``) by name."""
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
        elif line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
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
