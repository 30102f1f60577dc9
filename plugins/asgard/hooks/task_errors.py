"""Why a task try failed, from its log as Airflow's API serves it: a job's ``error`` summary.

A task that runs other code (a user's script, a sandboxed bundler) raises with that code's last output
in its message, a traceback whose last line is the exception that mattered. The summary keeps the
task's exception and the first lines of its message, and always ends with that last exception line.
"""

from __future__ import annotations

import re
from typing import Any

# A job's error: the exception's type and the first lines of its message (the rest is in the logs).
ERROR_LINES = 8
# The line a Python traceback ends with: an unindented, maybe dotted, exception name, alone or with
# ": message" (``ModuleNotFoundError: No module named 'skops'``, ``_pickle.UnpicklingError: ...``).
EXCEPTION_LINE = re.compile(
    r"(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning|Iteration)(?::\s.*)?"
)
NO_EXCEPTION = "the task failed without an exception in its log (see the job's logs)"


def exception_summary(content: Any) -> str:
    """The exception a task try ended with, from its log's last record that carries one (structured
    records), else from its text: type, first lines of the message, and the last exception line."""
    records = content if isinstance(content, list) else []
    for record in reversed(records):
        details = record.get("error_detail") if isinstance(record, dict) else None
        if details:  # the raised exception first, then its causes
            raised = details[0]
            return summarize(str(raised.get("exc_type")), str(raised.get("exc_value", "")))
    lines = [line for line in (content if isinstance(content, str) else "").splitlines() if line.strip()]
    if not lines:
        return NO_EXCEPTION
    found = last_exception_line(lines)
    return lines[-1] if found is None else lines[found]


def summarize(exc_type: str, message: str) -> str:
    """``exc_type: message`` cut to :data:`ERROR_LINES` lines, ending with the message's last exception
    line (the output's own traceback) however many lines came before it."""
    lines = message.splitlines() or [""]
    lines[0] = f"{exc_type}: {lines[0]}"
    found = last_exception_line(lines[1:])
    if found is None:
        return "\n".join(lines[:ERROR_LINES])
    end = found + 1  # its index in ``lines``
    if end < ERROR_LINES:
        return "\n".join(lines[: end + 1])
    return "\n".join([*lines[: ERROR_LINES - 1], "...", lines[end]])


def last_exception_line(lines: list[str]) -> int | None:
    """The index of the last line of ``lines`` that is a traceback's exception line, if one is."""
    for index in range(len(lines) - 1, -1, -1):
        if EXCEPTION_LINE.fullmatch(lines[index].rstrip()):
            return index
    return None


def render_log_record(line: Any) -> str:
    """One structured log record as text, with the exception it carries (type and message)."""
    if not isinstance(line, dict):
        return str(line)
    text = str(line.get("event", ""))
    for detail in line.get("error_detail") or []:
        text += f"\n{detail.get('exc_type')}: {detail.get('exc_value')}"
    return text
