"""The HTML report of one monitoring run: a table of every check, and a distribution overlay per drift.

Self-contained (inline SVG, no scripts, no external assets) so it opens from disk, from MLflow's
artifact viewer, or attached to an alert.
"""

from __future__ import annotations

import html
from typing import Any

from asgard.monitoring.store import Record

WIDTH, HEIGHT, PAD = 420, 180, 24


def render(model_name: str, model_version: str, records: list[Record], skipped: list[str], window: dict) -> str:
    rows = "".join(_row(record) for record in records)
    plots = "".join(
        _plot(record) for record in records if record.reference_data and record.current_data and record.breached
    )
    notes = "".join(f"<li>{html.escape(reason)}</li>" for reason in skipped)
    alerts = [text for record in records for text in record.alerts]
    banner = (
        f"<p class='alert'>{len(alerts)} alert(s): " + "; ".join(html.escape(text) for text in alerts) + "</p>"
        if alerts
        else "<p class='ok'>No alert.</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(model_name)} v{html.escape(model_version)} monitoring</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}}
.breach{{background:#fde2e1}} .alert{{color:#b00020;font-weight:600}} .ok{{color:#1b5e20}}
figure{{display:inline-block;margin:1em}} .ref{{fill:#1f77b4;opacity:.55}} .cur{{fill:#ff7f0e;opacity:.55}}
</style></head><body>
<h1>{html.escape(model_name)} v{html.escape(model_version)}</h1>
<p>Window {html.escape(str(window.get("start")))} to {html.escape(str(window.get("end")))} UTC,
{window.get("rows", 0)} scored rows.</p>
{banner}
{f"<h2>Not judged</h2><ul>{notes}</ul>" if notes else ""}
<h2>Checks</h2>
<table><tr><th>type</th><th>subject</th><th>metrics</th><th>rows</th><th>breached</th><th>alert</th></tr>{rows}</table>
{f"<h2>Distributions of what breached</h2>{plots}" if plots else ""}
</body></html>
"""


def _row(record: Record) -> str:
    metrics = ", ".join(f"{key}={value:.4g}" for key, value in record.metrics.items())
    css = " class='breach'" if record.breached else ""
    return (
        f"<tr{css}><td>{record.metric_type}</td><td>{html.escape(record.subject)}</td>"
        f"<td>{html.escape(metrics)}</td><td>{record.rows or ''}</td>"
        f"<td>{'yes' if record.breached else ''}</td><td>{'yes' if record.alert_triggered else ''}</td></tr>"
    )


def _plot(record: Record) -> str:
    """Reference (blue) and window (orange) proportions over the reference's bins or categories."""
    reference, current = record.reference_data or {}, record.current_data or {}
    if "bin_proportions" in reference and "bin_proportions" in current:
        edges = reference["bin_edges"]
        labels = [f"{edges[i]:.3g}" for i in range(len(edges) - 1)] or ["all"]
        pairs = list(zip(reference["bin_proportions"], current["bin_proportions"], strict=False))
    elif "frequencies" in reference and "frequencies" in current:
        labels = list(current["frequencies"])
        pairs = [(reference["frequencies"].get(label, 0.0), current["frequencies"][label]) for label in labels]
    else:
        return ""
    caption = (
        f"{html.escape(record.subject)}: reference (blue) vs window (orange), "
        f"drift_score {record.metrics.get('drift_score', 0):.3f}"
    )
    return f"<figure>{_bars(labels, pairs)}<figcaption>{caption}</figcaption></figure>"


def _bars(labels: list[str], pairs: list[tuple[float, float]]) -> str:
    top = max((max(pair) for pair in pairs), default=1.0) or 1.0
    slot = (WIDTH - 2 * PAD) / max(len(pairs), 1)
    shapes: list[str] = []
    for index, (expected, actual) in enumerate(pairs):
        x = PAD + index * slot
        for offset, value, css in ((0.1, expected, "ref"), (0.5, actual, "cur")):
            height = (HEIGHT - 2 * PAD) * value / top
            shapes.append(
                f"<rect class='{css}' x='{x + offset * slot:.1f}' y='{HEIGHT - PAD - height:.1f}' "
                f"width='{0.4 * slot:.1f}' height='{height:.1f}'><title>{value:.3f}</title></rect>"
            )
        shapes.append(
            f"<text x='{x + slot / 2:.1f}' y='{HEIGHT - 6}' font-size='9' text-anchor='middle'>"
            f"{html.escape(labels[index] if index < len(labels) else '')}</text>"
        )
    return f"<svg width='{WIDTH}' height='{HEIGHT}' xmlns='http://www.w3.org/2000/svg'>{''.join(shapes)}</svg>"


def describe(records: list[Record]) -> dict[str, Any]:
    """Counts for the task log and the run summary."""
    return {
        "checks": len(records),
        "breaches": sum(record.breached for record in records),
        "alerts": sum(record.alert_triggered for record in records),
    }
