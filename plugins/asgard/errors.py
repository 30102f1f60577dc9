"""Errors shared by the platform, and how tasks turn bad input into a failure that is not retried."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
    """The request itself is wrong (unknown table, bad column, bad window): retrying cannot help."""


@contextmanager
def fail_without_retry() -> Iterator[None]:
    """Inside a task: an :class:`InputError` fails the task at once (no retry), with its message."""
    try:
        yield
    except InputError as error:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(error)) from error
