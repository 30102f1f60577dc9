"""Errors shared by the platform.

An :class:`InputError` means the request itself is wrong (an unknown table, a bad column, an empty
window): trying again cannot help. It is an ``AirflowFailException``, so a task that raises one
fails at once, without its retries, with the message as the reason; outside Airflow it is a plain
``ValueError``.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class InputError(AirflowFailException, ValueError):
    """The request itself is wrong (unknown table, bad column, bad window): retrying cannot help."""


def redact_url(url: str) -> str:
    """A URL without the password it may carry (a database or server URL with credentials): what a message
    may say of a service."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
