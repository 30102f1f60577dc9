"""The client of one Airflow API server's ``/mlops`` API (and ``/feast``, and Airflow's REST API): what
``./asgard``'s commands, the main job and the tests call it with. It waits out a server restarting."""

from __future__ import annotations

import time
from typing import Any

import httpx

from asgard.hooks.airflow_api import CONNECT_RETRIES, RETRY_WAIT_MAX, AirflowApi

__all__ = ["CliError", "MlopsClient"]


class CliError(RuntimeError):
    """The API refused a request or a job failed; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# A connection the server closed before answering: "Server disconnected", a reset while reading.
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class MlopsClient:
    """The ``/mlops`` API (and ``/feast``, and Airflow's REST API) of one Airflow API server, with a token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(base_url=f"{self.base_url}/mlops", headers=headers, timeout=timeout)
        self._reached = False

    def get(self, path: str, **params: Any) -> Any:
        return self._answer(self._send("GET", path, params=params))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer(self._send("POST", path, json=body))

    def feast(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call to ``/feast`` on the same server."""
        return self._answer(self._send(method, f"{self.base_url}/feast{path}", **kwargs))

    def airflow(self) -> AirflowApi:
        """Airflow's REST API on the same server, as the same user."""
        return AirflowApi(self.base_url, self.token)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response. A server that answered before and now refuses is restarting: tried again 0.5 s to 16 s
        apart, about two minutes in all (a refusal sent nothing: a POST may be repeated; a GET also when the
        connection dropped under it). One never reached is named at once."""
        waits = iter(
            [min(0.5 * 2**attempt, RETRY_WAIT_MAX) for attempt in range(CONNECT_RETRIES)] if self._reached else []
        )
        repeatable = (httpx.ConnectError, *(_DROPPED if method == "GET" else ()))
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
                self._reached = True
                return response
            except httpx.TransportError as error:
                wait = next(waits, None) if isinstance(error, repeatable) else None
                if wait is None:
                    raise CliError(f"cannot reach {self.base_url}: {error}") from error
                time.sleep(wait)

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            status, request = response.status_code, response.request
            raise CliError(f"{request.method} {request.url.path}: {status} {detail}", status)
        return response.json()
