"""What ``./asgard`` prints by default: short tables a person reads, made from the API's answers.

Each function takes the answer as the API gives it (``--json`` prints that instead) and returns
text. A field an older or newer server leaves out is shown as ``-``, never a crash.
"""

from __future__ import annotations

import json
from typing import Any

# The metrics a version's row shows, in this order, when its run logged them.
HEADLINE_METRICS = ("roc_auc", "accuracy", "f1", "rmse", "mae", "r2")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns aligned to their widest cell; an empty list of rows says so."""
    cells = [[_cell(value) for value in row] for row in rows]
    if not cells:
        return "(none)"
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) for i in range(len(headers))]
    lines = [headers, *cells]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines)


def models(answer: dict[str, Any]) -> str:
    """``GET /mlops/models``: one row per model."""
    rows = [
        [
            model.get("model_name"),
            _aliases(model.get("aliases")),
            model.get("latest_version"),
            _serving_list(model),
            (model.get("updated_at") or "")[:19],
        ]
        for model in answer.get("models", [])
    ]
    return (
        table(["MODEL", "ALIASES", "LATEST", "SERVING", "UPDATED"], rows)
        + f"\n{answer.get('total', len(rows))} model(s)"
    )


def model(answer: dict[str, Any]) -> str:
    """``GET /mlops/models/{name}``: the model, then one row per version."""
    lines = [
        f"model {answer.get('model_name')}  aliases: {_aliases(answer.get('aliases'))}  "
        f"serving: {_serving_list(answer)}",
    ]
    if answer.get("description"):
        lines.append(answer["description"])
    rows = []
    for version in answer.get("versions", []):
        metrics = version.get("metrics") or {}
        shown = [
            f"{name}={metrics[name]:.4g}" for name in HEADLINE_METRICS if isinstance(metrics.get(name), int | float)
        ]
        gate = version.get("gate") or {}
        rows.append(
            [
                f"v{version.get('version')}",
                ",".join(version.get("aliases") or []) or "-",
                _version_serving(version),
                " ".join(shown) or "-",
                gate.get("decision") or gate.get("promoted") or "-",
                (version.get("created_at") or "")[:19],
            ]
        )
    lines.append(table(["VERSION", "ALIASES", "SERVING", "METRICS", "GATE", "CREATED"], rows))
    unknown = (answer.get("serving_state") or {}).get("unknown") or {}
    lines += [f"note: the {target} target did not answer ({why})" for target, why in unknown.items()]
    return "\n".join(lines)


def job(answer: dict[str, Any]) -> str:
    """``GET /mlops/jobs/{id}`` or ``/runs/{dag}/{run}``: state, times, tasks, error and result."""
    lines = [
        f"{answer.get('dag_id')} run {answer.get('run_id')}: {answer.get('status')}",
        f"queued {_time(answer.get('queued_at'))}  started {_time(answer.get('started_at'))}  "
        f"ended {_time(answer.get('ended_at'))}",
        table(["TASK", "STATE"], [[task, state] for task, state in (answer.get("tasks") or {}).items()]),
    ]
    error = answer.get("error")
    if error:
        lines.append(f"failed in {error.get('task')}:\n{error.get('message')}")
    if answer.get("model_version"):
        alias = "@champion" if answer.get("promoted") else "@challenger"
        lines.append(f"model {answer.get('model_name')} v{answer['model_version']} -> {alias}")
    deployment = answer.get("deployment")
    if deployment:
        where = f" at {deployment['endpoint']}" if deployment.get("endpoint") else ""
        lines.append(f"deployment {deployment.get('run_id') or ''}: {deployment.get('status')}{where}".strip())
    result = answer.get("result")
    if answer.get("dag_id") == "deploy_model" and isinstance(result, dict) and result.get("endpoint"):
        lines.append(f"serving {result.get('model_name')} v{result.get('version')} at {result['endpoint']}")
    if result is not None:
        lines.append("result: " + _short_json(result))
    return "\n".join(lines)


def history(answer: dict[str, Any]) -> str:
    """``POST /mlops/monitoring/history``: newest records first, then the summary."""
    rows = []
    for record in answer.get("records", []):
        metrics = record.get("metrics") or {}
        figures = " ".join(f"{k}={v:.3g}" for k, v in list(metrics.items())[:3] if isinstance(v, int | float))
        rows.append(
            [
                (record.get("timestamp") or "")[:19],
                f"v{record.get('model_version')}",
                record.get("metric_type"),
                record.get("subject") or "-",
                figures or "-",
                "; ".join(record.get("alerts") or []) or ("ALERT" if record.get("alert_triggered") else "-"),
            ]
        )
    summary = answer.get("summary") or {}
    tail = (
        f"{answer.get('total_records', len(rows))} record(s), {summary.get('total_alerts', 0)} alert(s); "
        f"metric types: {', '.join(summary.get('metric_types') or []) or '-'}"
    )
    return table(["TIME", "VERSION", "TYPE", "SUBJECT", "METRICS", "ALERTS"], rows) + "\n" + tail


def decision(answer: dict[str, Any]) -> str:
    """``./asgard approve`` / ``reject``: what was decided, by whom, on which run."""
    chosen = (answer.get("chosen_options") or ["?"])[0].lower()
    outcome = "approved" if chosen == "approve" else "rejected"
    who = (answer.get("responded_by") or {}).get("name") or "you"
    reason = (answer.get("params_input") or {}).get("reason")
    return (
        f"{outcome} {answer['model_name']} v{answer['version']} as {who} (deploy_model {answer['run_id']})"
        + (f": {reason}" if reason else "")
        + ("; the run deploys it now (./asgard job deploy_model RUN_ID follows it)" if outcome == "approved" else "")
    )


def gold_load(answer: dict[str, Any]) -> str:
    """``POST /feast/gold/{table}``: what the load wrote."""
    how = "created with" if answer.get("created") else {"replace": "replaced by"}.get(answer.get("mode"), "appended")
    lines = [
        f"gold.{answer.get('table')}: {how} {answer.get('rows')} row(s) in snapshot {answer.get('snapshot_id')} "
        f"({answer.get('total_rows')} row(s) in all)",
        table(["COLUMN", "TYPE"], [[name, kind] for name, kind in (answer.get("columns") or {}).items()]),
    ]
    return "\n".join(lines)


def _serving_list(model: dict[str, Any]) -> str:
    serving = model.get("serving")
    if serving is None:
        return "-"
    shown = [f"v{item.get('version')} ({item.get('role')}, {item.get('target')})" for item in serving]
    state = (model.get("serving_state") or {}).get("state")
    return ", ".join(shown) or ("unknown" if state == "unknown" else "nothing")


def _version_serving(version: dict[str, Any]) -> str:
    state = version.get("serving")
    if isinstance(state, dict):
        text = state.get("state", "-")
        if state.get("state") == "serving":
            text = f"serving ({state.get('role')}, {state.get('target')})"
        return text + (f" - {state['note']}" if state.get("note") else "")
    recorded = (version.get("deployment") or {}).get("status")
    return f"last deploy: {recorded}" if recorded else "-"


def _aliases(aliases: Any) -> str:
    if isinstance(aliases, dict):
        return ", ".join(f"@{alias}=v{number}" for alias, number in sorted(aliases.items())) or "-"
    return ", ".join(f"@{alias}" for alias in aliases or []) or "-"


def _time(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def _short_json(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)
