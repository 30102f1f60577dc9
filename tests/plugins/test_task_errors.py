"""A job's ``error`` summary ends with the exception that failed the task, whatever output came first."""

from __future__ import annotations

from asgard.hooks.task_errors import ERROR_LINES, exception_summary

SCRIPT_TRACEBACK = """train.py exited with code 1; last output:
fitted 800 rows
Traceback (most recent call last):
  File "/work/train.py", line 24, in <module>
    mlflow.sklearn.log_model(
  File "/env/lib/python3.11/site-packages/mlflow/sklearn/__init__.py", line 515, in log_model
    return Model.log(
           ^^^^^^^^^^
  File "/env/lib/python3.11/site-packages/mlflow/models/model.py", line 1300, in log
    flavor.save_model(path=local_path, mlflow_model=mlflow_model, **kwargs)
  File "/env/lib/python3.11/site-packages/mlflow/sklearn/__init__.py", line 704, in _save_model
    import skops.io
ModuleNotFoundError: No module named 'skops'
"""


def record(exc_type: str, message: str) -> dict:
    """A task log record as Airflow's API serves it, carrying the raised exception."""
    return {"event": "Task failed with exception", "error_detail": [{"exc_type": exc_type, "exc_value": message}]}


def test_a_traceback_in_the_message_ends_the_summary_with_its_exception_line():
    content = [{"event": "starting"}, record("ScriptError", SCRIPT_TRACEBACK), {"event": "done"}]
    summary = exception_summary(content).splitlines()
    assert summary[0] == "ScriptError: train.py exited with code 1; last output:"
    assert summary[1:3] == ["fitted 800 rows", "Traceback (most recent call last):"]
    assert summary[-2:] == ["...", "ModuleNotFoundError: No module named 'skops'"]
    assert len(summary) == ERROR_LINES + 1


def test_output_after_the_exception_line_is_left_out_and_a_short_message_is_whole():
    message = "bundling failed:\nTraceback (most recent call last):\n  File x\n_pickle.UnpicklingError: A load\nbye"
    assert exception_summary([record("InputError", message)]).splitlines() == [
        "InputError: bundling failed:",
        "Traceback (most recent call last):",
        "  File x",
        "_pickle.UnpicklingError: A load",
    ]


def test_a_message_without_a_traceback_keeps_its_first_lines():
    message = "\n".join(f"line {index}" for index in range(20))
    summary = exception_summary([record("InputError", message)]).splitlines()
    assert summary == ["InputError: line 0", *[f"line {index}" for index in range(1, ERROR_LINES)]]
    # Log levels and warnings printed by libraries are not exception lines.
    noisy = "failed:\nWARNING: slow\n/x.py:3: UserWarning: careful\nINFO: done"
    assert exception_summary([record("ScriptError", noisy)]) == "ScriptError: " + noisy


def test_a_text_log_ends_with_its_last_exception_line_else_its_last_line():
    assert exception_summary(SCRIPT_TRACEBACK + "\ncleaning up\n") == "ModuleNotFoundError: No module named 'skops'"
    assert exception_summary("one\ntwo\n\n") == "two"
    assert "without an exception" in exception_summary("")
