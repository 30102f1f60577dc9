"""The Models page inside the Airflow UI: each registered model, its versions and aliases, the gate's
decisions, where it serves, the latest monitoring verdict and each feature's drift over time.

Server-rendered HTML with an inline SVG chart: no script, nothing fetched from elsewhere (the page
works on a closed network), and every value from MLflow or the monitoring store is escaped. The
``/mlops`` app serves it behind Airflow's login (the UI's session cookie); the plugin puts it in
Airflow's navigation as an external view.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from asgard.deploy.strategies import REGRESSION_FIGURES
from asgard.monitoring.thresholds import Thresholds

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
# A report's file name, as monitor_model writes it: v<version>-<window end>.html.
REPORT_NAME = re.compile(r"^v[0-9]{1,9}-[0-9]{8}T[0-9]{6}Z\.html$")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a202c; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #cbd5e0; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
.alias { background: #2b6cb0; color: white; border-radius: 0.3rem; padding: 0 0.4rem; margin-right: 0.2rem; }
.ok { color: #276749; } .alert { color: #c53030; font-weight: bold; }
.serving { color: #276749; } .unknown { color: #b7791f; } .note { color: #744210; }
code { font-size: 0.85em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def models_index(models: list[dict[str, Any]], waiting: list[dict[str, Any]] | None = None) -> str:
    """Every registered model: its aliases and newest version, linking to its page; first, the deployments
    waiting for a decision (``waiting``: run id, subject, since, link), each linking to its form."""
    rows = "".join(
        f"<tr><td><a href='models/{quote(model['model_name'])}'>{_e(model['model_name'])}</a></td>"
        f"<td>{_aliases(model['aliases'])}</td><td>{_e(model['latest_version'])}</td>"
        f"<td>{_serving_now(model)}</td><td>{_e(model['updated_at'])}</td></tr>"
        for model in models
    )
    table = (
        "<table><tr><th>Model</th><th>Aliases</th><th>Newest version</th><th>Serving now</th><th>Updated</th></tr>"
        f"{rows}</table>"
        if models
        else "<p>No model is registered yet: train one with <code>train_model</code>.</p>"
    )
    decisions = ""
    if waiting:
        rows = "".join(
            f"<tr><td>{_e(item['subject'])}</td><td>{_e(item['since'])}</td><td>{_e(item['run_id'])}</td>"
            f"<td><a href='{_e(item['link'])}' target='_top'>decide in Airflow</a></td></tr>"
            for item in waiting
        )
        decisions = (
            "<h2>Waiting for a decision</h2><table><tr><th>Deployment</th><th>Since</th><th>deploy_model run</th>"
            f"<th></th></tr>{rows}</table><p>Or: <code>./asgard approve MODEL VERSION</code> / "
            "<code>./asgard reject MODEL VERSION --reason ...</code></p>"
        )
    return _page("Models", f"<h1>Models</h1>{decisions}{table}")


def _serving_now(model: dict[str, Any]) -> str:
    """The versions the targets say serve the model (from ``asgard.deploy.serving_state``), each with its
    role; "unknown" when a target did not answer, rather than a guess from the registry's tags."""
    if "serving" not in model:
        return ""
    places = [
        f"<span class='serving'>v{_e(item['version'])}</span> {_e(item['role'])} on {_e(item['target'])}"
        + (f" <small class='note'>{_e(item['note'])}</small>" if item.get("note") else "")
        for item in model["serving"]
    ]
    unknown = (model.get("serving_state") or {}).get("unknown") or {}
    places += [f"<span class='unknown'>unknown</span> on {_e(target)}" for target in sorted(unknown)]
    return "<br>".join(places) or "nothing"


def _aliases(aliases: dict[str, str] | list[str]) -> str:
    if isinstance(aliases, dict):
        return "".join(f"<span class='alias'>@{_e(a)}</span>v{_e(v)} " for a, v in sorted(aliases.items()))
    return "".join(f"<span class='alias'>@{_e(a)}</span>" for a in sorted(aliases))


def model_page(model: dict[str, Any], history: dict[str, Any], *, mlflow_url: str) -> str:
    """One model: versions (aliases, metrics, gate, deployment, links), the monitoring verdict, drift."""
    name = model["model_name"]
    body = [f"<p><a href='../models'>All models</a></p><h1>{_e(name)}</h1>", f"<p>{_aliases(model['aliases'])}</p>"]
    body.append("<h2>Latest monitoring verdict</h2>" + _verdict(name, history["records"]))
    body.append("<h2>Feature drift over time</h2>" + drift_chart(history["records"], Thresholds().drift))
    body.append("<h2>Versions</h2>" + _versions(model, mlflow_url))
    return _page(f"{name} - Models", "".join(body))


def _versions(model: dict[str, Any], mlflow_url: str) -> str:
    rows = []
    for version in model["versions"]:
        tags, gate, deployment = version["tags"], version["gate"], version["deployment"] or {}
        # The holdout's own metrics (monitoring and the trivial baseline log theirs on the same run).
        own = {k: v for k, v in version["metrics"].items() if not k.startswith(("baseline_", "monitoring."))}
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(own.items()))
        run, experiment = version["run_id"], version.get("experiment_id")
        links = []
        if run and experiment:
            url = f"{mlflow_url}/#/experiments/{quote(experiment)}/runs/{quote(run)}"
            links.append(f"<a href='{_e(url)}' target='_blank'>MLflow run</a>")
        dag_id, dag_run = tags.get("airflow.dag_id"), tags.get("airflow.run_id")
        if dag_id and dag_run:
            url = f"/dags/{quote(dag_id)}/runs/{quote(dag_run, safe='')}"
            links.append(f"<a href='{_e(url)}' target='_top'>{_e(dag_id)} run</a>")
        serving = _serving_cell(version.get("serving"), deployment)
        for strategy in ("canary", "shadow"):
            trial = deployment.get(strategy)
            if isinstance(trial, dict):
                figures = ", ".join(f"{key} {_e(trial[key])}" for key in _trial_figures(trial) if key in trial)
                decision, reason = _e(trial.get("decision")), _e(trial.get("reason"))
                serving += f"<br>{strategy}: {decision}<br><small>{reason}; {figures}</small>"
        serving += _decision_note(deployment.get("decision"))
        rows.append(
            f"<tr><td>v{_e(version['version'])}</td><td>{_aliases(version['aliases'])}</td>"
            f"<td>{_e(tags.get('framework'))} {_e(tags.get('algorithm'))}</td><td>{_e(metrics)}</td>"
            f"<td>{_e(gate.get('decision'))}<br><small>{_e(gate.get('reason'))}</small></td>"
            f"<td>{serving}</td><td>{' · '.join(links)}</td></tr>"
        )
    header = (
        "<tr><th>Version</th><th>Aliases</th><th>Model</th><th>Holdout metrics</th><th>Gate decision</th>"
        "<th>Serving now (last deploy: endpoint, digest)</th><th>Links</th></tr>"
    )
    return f"<table>{header}{''.join(rows)}</table>"


# What a trial's verdict rests on, by the kind of model (``asgard.deploy.strategies``' figures): a
# classifier's answers agree or not; a regressor's differ by some amount (an agreement of floats means nothing).
COMMON_FIGURES = ("requests", "errors", "p99_ms", "stable_p99_ms")
CLASSIFIER_FIGURES = ("agreement", "mean_abs_probability_diff")
# Named as the tags name them; relative_* are over the serving version's standard deviation (stable_std),
# and max_difference is the limit on relative_p95_abs_difference the shadow was decided by.
REGRESSOR_FIGURES = (*REGRESSION_FIGURES, "max_difference")


def _trial_figures(trial: dict[str, Any]) -> tuple[str, ...]:
    """The figures a canary's or shadow's verdict is shown with: a regressor's differences, a classifier's agreement."""
    regression = trial.get("model_type") == "regression" or trial.get("measure") == "relative_p95_abs_difference"
    return COMMON_FIGURES + (REGRESSOR_FIGURES if regression else CLASSIFIER_FIGURES)


def _decision_note(decision: Any) -> str:
    """Who decided the version's deployment, when and why (``asgard.deploy.approval``'s record)."""
    if not isinstance(decision, dict) or not decision.get("outcome"):
        return ""
    said = f": {_e(decision['reason'])}" if decision.get("reason") else ""
    who = f"{_e(decision.get('outcome'))} by {_e(decision.get('by'))} at {_e(decision.get('at'))}"
    return f"<br><small class='decision'>deploy decision: {who}{said}</small>"


def _serving_cell(state: dict[str, Any] | None, deployment: dict[str, Any]) -> str:
    """Whether the version serves now (as its target says), and what its last deploy recorded."""
    recorded = ""
    if deployment:
        status = deployment.get("status")
        if status == "replaced" and deployment.get("replaced_by"):
            status = f"replaced by v{deployment['replaced_by']} at {deployment.get('replaced_at')}"
        recorded = (
            f"<small>last deploy: {_e(status)} on {_e(deployment.get('target'))}</small><br>"
            f"<code>{_e(deployment.get('endpoint'))}</code><br><code>{_e(deployment.get('digest'))}</code>"
        )
    if state is None:  # no target was asked: the recorded outcome only
        return recorded or "not deployed"
    if state["state"] == "serving":
        now = f"<b class='serving'>serving</b> ({_e(state.get('role'))} on {_e(state.get('target'))})"
    elif state["state"] == "unknown":
        now = f"<b class='unknown'>unknown</b> <small>({_e(state.get('reason'))})</small>"
    else:
        now = "not serving"
    if state.get("note"):
        now += f"<br><small class='note'>{_e(state['note'])}</small>"
    return f"{now}<br>{recorded}" if recorded else now


def _verdict(name: str, records: list[dict[str, Any]]) -> str:
    """The newest monitoring run's outcome: its alerts, else how many checks passed; its report."""
    if not records:
        return "<p>Not monitored yet: <code>monitor_model</code> runs daily for every serving champion.</p>"
    # The newest monitor_model run's records (a record logged through POST /mlops/monitoring has no run).
    newest = next((record for record in records if record["tags"].get("source_run")), records[0])
    run = newest["tags"].get("source_run")
    same_run = [record for record in records if record["tags"].get("source_run") == run] if run else [newest]
    alerts = [text for record in same_run for text in record["alerts"]]
    verdict = (
        "<p class='alert'>Alert: " + "; ".join(_e(text) for text in alerts) + "</p>"
        if alerts
        else f"<p class='ok'>No alert: {len(same_run)} checks within their thresholds.</p>"
    )
    window = newest.get("window") or {}
    report = report_name(newest["model_version"], window.get("end"))
    link = f" <a href='../reports/{quote(name)}/{report}'>HTML report</a>" if report else ""
    return (
        f"{verdict}<p>v{_e(newest['model_version'])}, window {_e(window.get('start'))} to "
        f"{_e(window.get('end'))}, monitor_model run <code>{_e(run)}</code>.{link}</p>"
    )


def report_name(version: str, window_end: str | None) -> str | None:
    """The file name monitor_model gives the report of ``version``'s window ending at ``window_end``."""
    if not window_end:
        return None
    end = datetime.fromisoformat(window_end)
    return f"v{version}-{end:%Y%m%dT%H%M%SZ}.html"


def drift_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[datetime, float]]]:
    """Each feature's drift score by window end (or record time), oldest first."""
    series: dict[str, list[tuple[datetime, float]]] = {}
    for record in records:
        score = record["metrics"].get("drift_score")
        if record["metric_type"] != "feature_drift" or score is None:
            continue
        moment = (record.get("window") or {}).get("end") or record["timestamp"]
        series.setdefault(record["subject"], []).append((datetime.fromisoformat(moment), float(score)))
    return {feature: sorted(points) for feature, points in sorted(series.items())}


def drift_chart(records: list[dict[str, Any]], threshold: float, width: int = 720, height: int = 260) -> str:
    """An SVG line chart of each feature's drift score over time, with the alert threshold."""
    series = drift_series(records)
    if not series:
        return "<p>No feature drift measured yet.</p>"
    moments_utc = [moment for points in series.values() for moment, _ in points]
    moments = [moment.timestamp() for moment in moments_utc]
    top = max([threshold * 1.2, *(score for points in series.values() for _, score in points)])
    left, right, low, high = min(moments), max(moments), 40, 20
    span = (right - left) or 1.0

    def xy(moment: datetime, score: float) -> str:
        x = low + (moment.timestamp() - left) / span * (width - low - high)
        y = height - 30 - score / top * (height - 50)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='drift-chart' width='{width}' "
        f"height='{height + 20 * len(series)}' role='img' aria-label='feature drift over time'>",
        f"<line x1='{low}' y1='{height - 30}' x2='{width - high}' y2='{height - 30}' stroke='#718096'/>",
        f"<text x='2' y='14' font-size='11'>drift score (max {top:.3g})</text>",
        f"<text x='{low}' y='{height - 14}' font-size='11'>{min(moments_utc):%Y-%m-%d %H:%M}</text>",
        f"<text x='{width - high}' y='{height - 14}' font-size='11' text-anchor='end'>"
        f"{max(moments_utc):%Y-%m-%d %H:%M} UTC</text>",
    ]
    threshold_y = height - 30 - threshold / top * (height - 50)
    parts.append(
        f"<line x1='{low}' y1='{threshold_y:.1f}' x2='{width - high}' y2='{threshold_y:.1f}' stroke='#c53030' "
        f"stroke-dasharray='4 3'/><text x='{width - high - 110}' y='{threshold_y - 4:.1f}' font-size='11' "
        f"fill='#c53030'>alert threshold {threshold:g}</text>"
    )
    for index, (feature, points) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        coordinates = " ".join(xy(moment, score) for moment, score in points)
        parts.append(
            f"<polyline class='drift-series' data-feature='{_e(feature)}' fill='none' stroke='{color}' "
            f"stroke-width='2' points='{coordinates}'/>"
        )
        for moment, score in points:
            x, y = xy(moment, score).split(",")
            parts.append(
                f"<circle cx='{x}' cy='{y}' r='3' fill='{color}'><title>{_e(feature)} {score:.4f} at "
                f"{moment:%Y-%m-%d %H:%M}</title></circle>"
            )
        legend_y = height + 20 * index
        parts.append(
            f"<rect x='{low}' y='{legend_y - 9}' width='12' height='4' fill='{color}'/>"
            f"<text x='{low + 18}' y='{legend_y}' font-size='12'>{_e(feature)} (latest {points[-1][1]:.3f})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
