"""A shadow compared by the kind of model: a classifier by agreement, a regressor by the difference of
its predictions relative to the serving version's spread — counted (``asgard_serving.agreement``),
summed over pods, reported by the router over real HTTP, and decided on (``strategies.decide``)."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tests.plugins.test_rollout_strategies import serving

from asgard.deploy.kubernetes_trials import _traffic
from asgard.deploy.routes import RouteTable
from asgard.deploy.strategies import SHADOW, Rollout, decide, watch
from asgard.deploy.trial_metrics import combine, comparison, parse_metrics, served_model_type
from asgard.local.router import TrafficWindow, create_app
from asgard_serving.agreement import HIGHEST, LOWEST, Agreement


def compared(pairs: list[tuple[list, list]], model_type: str | None = None) -> dict:
    agreement = Agreement()
    for stable, shadow in pairs:
        agreement.compare(json.dumps({"predictions": stable}).encode(), json.dumps({"predictions": shadow}).encode())
    return comparison(agreement.counters(), model_type)


def prices(rows: int = 400, seed: int = 7) -> list[float]:
    generator = random.Random(seed)
    return [generator.gauss(250_000.0, 40_000.0) for _ in range(rows)]


def window(figures: dict, requests: int = 100) -> dict:
    """The router's summary around ``figures`` (a trial with enough healthy, fast requests)."""
    side = {"requests": requests, "errors": 0, "error_rate": 0.0, "p99_ms": 5.0}
    return {"stable": {**side, "requests": 900}, "candidate_side": side, **figures, "mirrors_dropped": 0}


SHADOW_100 = Rollout(strategy=SHADOW, min_requests=100)


# --- the comparison -------------------------------------------------------------------------------


def test_a_classifier_is_still_compared_by_agreement():
    agreement = Agreement()
    stable = {"predictions": [0, 1, 1, 0], "probabilities": [[1, 0], [0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]}
    other = {"predictions": [0, 1, 0, 0], "probabilities": [[1, 0], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]}
    agreement.compare(json.dumps(stable).encode(), json.dumps(other).encode())
    agreement.compare(b"not json", json.dumps(other).encode())
    figures = comparison(agreement.counters())  # no model type given: integer classes and probabilities
    assert figures == {
        "model_type": "classification",
        "measure": "agreement",
        "compared_rows": 4,
        "agreement": 0.75,
        "mean_abs_probability_diff": pytest.approx(0.1),
    }
    assert agreement.rate == 0.75 and agreement.mean_abs_probability_diff == pytest.approx(0.1)
    # Float labels of a classifier stay a classifier's when the deploy says so.
    labels = compared([([0.0, 1.0, 1.0], [0.0, 1.0, 0.0])], "classification")
    assert labels["measure"] == "agreement" and labels["agreement"] == pytest.approx(2 / 3)
    verdict = decide(Rollout(strategy=SHADOW, min_requests=100, min_agreement=0.9), window(labels), elapsed=5)
    assert verdict.state == "breach" and verdict.reason == "min_agreement: agreement 66.67% < 90.00%"


def test_identical_regression_predictions_differ_by_nothing_and_pass():
    stable = prices()
    figures = compared([(stable[i : i + 4], stable[i : i + 4]) for i in range(0, 400, 4)], "regression")
    assert figures["measure"] == "relative_p95_abs_difference" and "agreement" not in figures
    assert figures["difference_rows"] == 400 and figures["compared_rows"] == 400
    assert figures["mean_abs_difference"] == 0 and figures["p95_abs_difference"] == 0
    assert figures["relative_p95_abs_difference"] == 0 and figures["stable_std"] == pytest.approx(40_000, rel=0.15)
    verdict = decide(SHADOW_100, window(figures), elapsed=5)
    assert verdict.state == "pass", verdict
    assert verdict.figures["measure"] == "relative_p95_abs_difference" and verdict.figures["max_difference"] == 1.0
    assert "agreement" not in verdict.figures and verdict.figures["relative_p95_abs_difference"] == 0
    assert "p95 absolute difference 0 = 0 x the serving version's std" in verdict.reason


def test_float_noise_is_no_difference():
    stable = prices()
    noisy = [value + random.Random(i).uniform(-1e-9, 1e-9) for i, value in enumerate(stable)]
    figures = compared([(stable, noisy)])  # inferred: fractional predictions and no probabilities
    assert figures["model_type"] == "regression"
    assert 0 < figures["p95_abs_difference"] < 1.1e-9 and figures["relative_p95_abs_difference"] < 1e-12
    assert decide(SHADOW_100, window(figures), elapsed=5).state == "pass"


def test_a_shifted_regressor_breaches_max_difference_naming_the_measure():
    stable = prices()
    figures = compared([(stable, [value + 60_000.0 for value in stable])], "regression")
    assert figures["mean_abs_difference"] == pytest.approx(60_000)
    # The p95 is read from 1.1x buckets: within 10% of the exact 60,000.
    assert figures["p95_abs_difference"] == pytest.approx(60_000, rel=0.1)
    assert figures["relative_p95_abs_difference"] == pytest.approx(60_000 / figures["stable_std"], rel=0.1)
    verdict = decide(SHADOW_100, window(figures), elapsed=5)
    assert verdict.state == "breach" and verdict.figures["limit"] == "max_difference"
    assert verdict.reason.startswith("max_difference: p95 absolute difference ")
    assert "x the serving version's std" in verdict.reason and "(> 1)" in verdict.reason
    assert "mean absolute difference 60000 = " in verdict.reason
    assert verdict.figures["measure"] == "relative_p95_abs_difference"
    assert verdict.figures["relative_p95_abs_difference"] > 1
    # A looser limit lets the same shift through, and says by how much it passed.
    loose = decide(Rollout(strategy=SHADOW, min_requests=100, max_difference=2), window(figures), elapsed=5)
    assert loose.state == "pass" and "(<= 2)" in loose.reason


def test_a_regressor_with_nothing_comparable_or_no_spread_is_not_promoted():
    nothing = decide(SHADOW_100, window(compared([], "regression")), elapsed=5)
    assert nothing.state == "breach" and "no numeric predictions compared (of 0 row(s))" in nothing.reason
    flat = compared([([5.0] * 10, [5.5] * 10)], "regression")
    assert flat["stable_std"] == 0 and flat["relative_p95_abs_difference"] is None
    no_spread = decide(SHADOW_100, window(flat), elapsed=5)
    assert no_spread.state == "breach" and "did not vary (std 0)" in no_spread.reason
    same = compared([([5.0] * 10, [5.0] * 10)], "regression")
    assert decide(SHADOW_100, window(same), elapsed=5).state == "pass"


def test_the_histogram_stays_bounded_and_its_p95_close():
    generator = random.Random(3)
    agreement = Agreement()
    differences = [10 ** generator.uniform(-15, 15) for _ in range(20_000)]
    for start in range(0, len(differences), 500):
        part = differences[start : start + 500]
        agreement.compare(
            json.dumps({"predictions": [0.5] * len(part)}).encode(),
            json.dumps({"predictions": [0.5 + d for d in part]}).encode(),
        )
    assert len(agreement.difference_buckets) <= HIGHEST - LOWEST + 2
    moderate = Agreement()
    values = [generator.expovariate(1.0) for _ in range(5_000)]
    moderate.compare(json.dumps({"predictions": [0.0] * 5_000}).encode(), json.dumps({"predictions": values}).encode())
    exact = sorted(values)[int(0.95 * len(values))]
    assert comparison(moderate.counters(), "regression")["p95_abs_difference"] == pytest.approx(exact, rel=0.1)


def test_pods_counters_sum_and_subtract_to_one_windows_comparison():
    """The Kubernetes path: each serving pod exposes its counters; the deploy sums them over the pods
    and takes away what they had counted when the trial began."""
    stable = prices(300)
    shifted = [value + 20_000.0 for value in stable]
    before, pods, whole = Agreement(), [Agreement(), Agreement()], Agreement()
    before.compare(json.dumps({"predictions": [1.0, 2.5]}).encode(), json.dumps({"predictions": [9.0, 2.5]}).encode())
    for index, (left, right) in enumerate(zip(stable, shifted, strict=True)):
        answer = [json.dumps({"predictions": [value]}).encode() for value in (left, right)]
        pods[index % 2].compare(*answer)
        whole.compare(*answer)
    pods[0].compare(json.dumps({"predictions": [1.0, 2.5]}).encode(), json.dumps({"predictions": [9.0, 2.5]}).encode())

    def exposition(agreement: Agreement) -> str:
        return "\n".join(agreement.lines())

    start = combine([parse_metrics(exposition(before))])
    now = combine([parse_metrics(exposition(pod)) for pod in pods], minus=start)
    side = {"requests": 0, "errors": 0, "buckets": {}}
    summed = _traffic(side, side, now["counters"], "regression")
    expected = comparison(whole.counters(), "regression")
    for key in ("difference_rows", "mean_abs_difference", "p95_abs_difference", "stable_std"):
        assert summed[key] == pytest.approx(expected[key], rel=1e-9), key
    assert summed["measure"] == "relative_p95_abs_difference" and summed["relative_p95_abs_difference"] > 0.3
    # An older serving image reports the classifier's counters only: a regressor's difference is unmeasured.
    old = {name: value for name, value in now["counters"].items() if "difference" not in name}
    unmeasured = decide(SHADOW_100, window(comparison(old, "regression")), elapsed=5)
    assert unmeasured.figures["limit"] == "max_difference" and "could not be measured" in unmeasured.reason


def test_watch_decides_a_regression_shadow_by_its_difference_once_the_window_is_full():
    stable = prices()
    shifted = compared([(stable, [value * 1.5 for value in stable])], "regression")
    windows = iter([window(shifted, requests=n) for n in (10, 60, 100)])
    now, said = [0.0], []
    verdict = watch(
        SHADOW_100,
        lambda: next(windows),
        progress=said.append,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + 6),
    )
    assert verdict.state == "breach" and verdict.figures["seconds"] == 12 and said == []
    assert verdict.figures["limit"] == "max_difference" and verdict.figures["model_type"] == "regression"
    assert verdict.figures["relative_mean_abs_difference"] > 1  # a 50% rescale of prices is ~6 std off


def test_the_model_type_comes_from_the_versions_metadata():
    assert served_model_type(lambda *_: (200, json.dumps({"model_type": "regression"}))) == "regression"
    assert served_model_type(lambda *_: (200, json.dumps({"model_type": "classification"}))) == "classification"
    assert served_model_type(lambda *_: (503, "not loaded")) is None

    def unreachable(*_):
        raise ConnectionError("refused")

    assert served_model_type(unreachable) is None


def test_max_difference_is_a_shadow_limit():
    assert Rollout.from_params({"strategy": "shadow"}).max_difference == 1.0
    assert Rollout.from_params({"strategy": "shadow", "max_difference": 0.25}).max_difference == 0.25
    with pytest.raises(Exception, match="max_difference applies to the shadow strategy only"):
        Rollout.from_params({"strategy": "canary", "max_difference": 0.5})


def test_a_window_knows_its_model_type_from_the_route():
    regression = TrafficWindow("x", SHADOW, 10, "regression")
    regression.agreement.compare(b'{"predictions": [1, 2]}', b'{"predictions": [1, 4]}')
    summary = regression.summary()
    assert summary["measure"] == "relative_p95_abs_difference" and summary["mean_abs_difference"] == 1.0
    assert "agreement" not in summary


# --- the router, over real HTTP -------------------------------------------------------------------


def _regressor(version: str, shift: float = 0.0, noise: float = 0.0) -> Starlette:
    """A stand-in regression version: predicts each row's ``x`` times 1000, plus ``shift`` (and ``noise``)."""

    async def predict(request: Request) -> JSONResponse:
        rows = (await request.json())["inputs"]["x"]
        return JSONResponse(
            {
                "predictions": [x * 1000.0 + shift + noise * (-1) ** i for i, x in enumerate(rows)],
                "model_version": version,
            }
        )

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse({"model_version": version, "model_type": "regression"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/metadata", metadata)])


def _shadow_window(tmp_path, shadow_app: Starlette, model_type: str | None) -> dict:
    table = RouteTable(tmp_path / "routes.json")
    with serving(create_app(table.path)) as url, serving(_regressor("1")) as stable, serving(shadow_app) as shadow:
        candidate = {"upstream": shadow, "version": "2", "strategy": SHADOW, "percent": 50}
        if model_type:
            candidate["model_type"] = model_type
        table.set("price", {"upstream": stable, "version": "1", "candidate": candidate})
        with httpx.Client() as client:
            for request in range(40):
                rows = [((request * 3 + row) % 17) / 4 for row in range(3)]
                answer = client.post(f"{url}/models/price/predict", json={"inputs": {"x": rows}})
                assert answer.status_code == 200 and answer.json()["model_version"] == "1"
            seen = client.get(f"{url}/traffic/price").json()
            for _ in range(100):
                if seen["compared_rows"] >= 60:
                    break
                seen = client.get(f"{url}/traffic/price").json()
    return seen


def test_the_router_reports_a_regression_shadows_difference(tmp_path):
    seen = _shadow_window(tmp_path, _regressor("2", shift=4000.0), "regression")
    assert seen["candidate_side"]["requests"] == 20 and seen["compared_rows"] == 60
    assert seen["model_type"] == "regression" and seen["measure"] == "relative_p95_abs_difference"
    assert "agreement" not in seen
    assert seen["mean_abs_difference"] == pytest.approx(4000)
    assert seen["p95_abs_difference"] == pytest.approx(4000, rel=0.1)
    assert seen["relative_p95_abs_difference"] == pytest.approx(4000 / seen["stable_std"], rel=0.1)
    assert seen["relative_p95_abs_difference"] > 1
    verdict = decide(Rollout(strategy=SHADOW, min_requests=20, max_p99_ratio=1000), seen, elapsed=5)
    assert verdict.state == "breach" and verdict.reason.startswith("max_difference: p95 absolute difference")


def test_the_router_lets_float_noise_pass_even_without_a_model_type(tmp_path):
    seen = _shadow_window(tmp_path, _regressor("2", noise=1e-9), None)
    assert seen["model_type"] == "regression" and seen["compared_rows"] == 60  # fractional answers, no probabilities
    assert seen["relative_p95_abs_difference"] < 1e-9
    assert decide(Rollout(strategy=SHADOW, min_requests=20, max_p99_ratio=1000), seen, elapsed=5).state == "pass"
