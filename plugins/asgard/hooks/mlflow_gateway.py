"""A door to MLflow for one run: all that a sandboxed user script may do on the tracking server.

A script logs into the run the platform made for its DAG run, and nothing else: it may read that
run and its experiment, log params, metrics, tags, inputs and outputs to it, upload artifacts under
it, and create and finish logged models from it (and read those). Every other request — other runs
and experiments, the model registry (versions, aliases, deletes), searches — is answered 403 without
reaching MLflow. The platform, not the script, registers and gates the model afterwards.

The door is an HTTP app served on a unix socket (:class:`Gateway`); the sandbox reaches it through a
TCP relay on its own loopback (``include/sandbox/launch.py``).

The door checks the path it forwards, byte for byte: a request target with a dot segment, an empty
segment, a backslash, or an escape that decodes to a dot, a slash, a backslash, ``%`` or a control character
(any case, so doubly encoded ones too) is refused before the scope is consulted, and what passes is
sent upstream exactly as it came. So the path MLflow routes is the one the scope allowed: no client
library or server on the way can turn ``…/artifacts/%2e%2e/…`` into another run's or the registry's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asgard.core.doors import query_refusal, serving_door, serving_door_on_tcp
from asgard.hooks.mlflow import PLATFORM_TAG_PREFIXES

log = logging.getLogger(__name__)

API = re.compile(r"^/api/[23]\.0/mlflow/")
ARTIFACTS = re.compile(r"^/api/[23]\.0/mlflow-artifacts/")
# Run-scoped REST calls: allowed when the run_id they carry is the scope's run.
RUN_WRITES = {
    "runs/update",
    "runs/log-batch",
    "runs/log-metric",
    "runs/log-parameter",
    "runs/set-tag",
    "runs/delete-tag",
    "runs/log-inputs",
    "runs/outputs",
    "runs/log-model",
}
RUN_READS = {"runs/get", "metrics/get-history"}
# The tracking API's bodies are small JSON (MLflow's own log-batch limit is about 1 MB); artifacts
# stream, each no larger than the run's disk, and all of a run's together no larger either.
MAX_API_BODY_BYTES = 16 * 1024 * 1024
LOGGED_MODEL = re.compile(r"^logged-models/(?P<model_id>m-[0-9a-f]+)(/.*)?$")
# A percent escape, and what a checked path's escapes may not decode to (see the module's docstring).
ESCAPE = re.compile(rb"%(?P<hex>[0-9A-Fa-f]{2})?")
UNSAFE_ESCAPED = {ord("."), ord("/"), ord("\\"), ord("%"), 0x7F, *range(0x20)}
RUN_ARTIFACT = re.compile(r"^(artifacts|mpu/[a-z-]+)/(?P<experiment>\d+)/(?P<run>[0-9a-f]{32})/artifacts(/.*)?$")
MODEL_ARTIFACT = re.compile(r"^(artifacts|mpu/[a-z-]+)/(?P<experiment>\d+)/models/(?P<model_id>m-[0-9a-f]+)/.*$")


@dataclass
class RunScope:
    """What one sandboxed script may touch: its run, its experiment, the logged models it creates."""

    run_id: str
    experiment_id: str
    experiment_name: str
    model_ids: set[str] = field(default_factory=set)
    # What the run's artifacts may hold in all (the script's disk cap); and what they hold so far.
    max_artifact_bytes: int = 4096 * 1024 * 1024
    artifact_bytes: int = 0

    def refusal(self, method: str, path: str, query: dict[str, str], body: bytes) -> str | None:
        """Why the request is refused (None: it is within the scope)."""
        artifacts = ARTIFACTS.match(path)
        if artifacts:
            return self._artifact_refusal(path[artifacts.end() :])
        api = API.match(path)
        if not api:
            return f"{path} is not an MLflow tracking API"
        call = path[api.end() :]
        if method in ("POST", "PATCH") and (why := body_refusal(body)):
            return why
        data = _json(body) if method in ("POST", "PATCH") else {}
        if call == "experiments/get-by-name" and method == "GET":
            return self._mismatch("experiment", query.get("experiment_name"), self.experiment_name)
        if call == "experiments/get" and method == "GET":
            return self._mismatch("experiment", query.get("experiment_id"), self.experiment_id)
        if call in RUN_READS and method == "GET":
            return self._mismatch("run", query.get("run_id") or query.get("run_uuid"), self.run_id)
        if call in RUN_WRITES and method == "POST":
            return self._mismatch("run", data.get("run_id") or data.get("run_uuid"), self.run_id) or (
                _platform_tag_refusal(call, data)
            )
        if call == "logged-models" and method == "POST":
            return self._mismatch("run", data.get("source_run_id"), self.run_id) or self._mismatch(
                "experiment", str(data.get("experiment_id")), self.experiment_id
            )
        match = LOGGED_MODEL.match(call)
        if match:
            model_id = match["model_id"]
            return None if model_id in self.model_ids else f"logged model {model_id} was not created by this run"
        return f"{method} {call} is not open to user scripts (they log into their own run; the platform registers)"

    def _artifact_refusal(self, call: str) -> str | None:
        run = RUN_ARTIFACT.match(call)
        if run:
            return self._mismatch("run", run["run"], self.run_id)
        model = MODEL_ARTIFACT.match(call)
        if model:
            model_id = model["model_id"]
            return None if model_id in self.model_ids else f"artifacts of {model_id} are not this run's"
        return f"artifact path {call} is outside this run"

    def learn(self, method: str, path: str, answer: bytes) -> None:
        """Remember the logged models this run created (their id is in MLflow's answer)."""
        api = API.match(path)
        if method == "POST" and api and path[api.end() :] == "logged-models":
            model_id = (_json(answer).get("model") or {}).get("info", {}).get("model_id")
            if model_id:
                self.model_ids.add(model_id)

    @staticmethod
    def _mismatch(what: str, given: str | None, allowed: str) -> str | None:
        return None if given == allowed else f"{what} {given!r} is not this run's {what} ({allowed})"


def _platform_tag_refusal(call: str, data: dict[str, Any]) -> str | None:
    """A run tag the platform owns (how it finds a DAG run's MLflow run and trusts what it logged) is
    not the script's to set or delete."""
    keys = [data.get("key")] if call in ("runs/set-tag", "runs/delete-tag") else []
    if call == "runs/log-batch":
        tags = data.get("tags")
        keys = [tag.get("key") if isinstance(tag, dict) else None for tag in tags] if isinstance(tags, list) else []
    for key in keys:
        if not isinstance(key, str):
            return "a tag's key must be a string"
        if key.startswith(PLATFORM_TAG_PREFIXES):
            return f"tag {key[:100]!r} is the platform's ({', '.join(PLATFORM_TAG_PREFIXES)} tags are set by it)"
    return None


def path_refusal(raw_path: bytes) -> str | None:
    """Why a raw request path is refused before any scope check (None: it means exactly what it says)."""
    from urllib.parse import unquote_to_bytes

    if not raw_path.startswith(b"/"):
        return "the path is not absolute"
    if any(byte < 0x21 or byte > 0x7E or byte == ord("\\") for byte in raw_path):
        return "the path holds a backslash, a space, a control or a non-ASCII byte"
    for escape in ESCAPE.finditer(raw_path):
        if escape["hex"] is None:
            return "the path holds a % that is no escape"
        if int(escape["hex"], 16) in UNSAFE_ESCAPED:
            return f"the path escapes a character that changes its meaning ({escape[0].decode()})"
    segments = unquote_to_bytes(raw_path).split(b"/")[1:]
    if any(segment in (b"", b".", b"..") for segment in segments):
        return "the path has an empty, '.' or '..' segment"
    return None


def body_refusal(body: bytes) -> str | None:
    """Why an API body is refused before its fields are read: MLflow parses a body's keys by their proto
    names and by their JSON names too (``runId`` beside ``run_uuid``), and then reads the one the door did
    not check; a key named twice is read one way here, maybe another there. Only the proto names
    (snake_case), each once, in a JSON object, pass."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a key is given twice ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))})")
        if camel := [key for key in keys if key != key.lower()]:
            raise ValueError(f"keys must be MLflow's field names in snake_case, not {', '.join(camel[:5])}")
        return dict(items)

    if not body.strip():
        return None
    try:
        value = json.loads(body, object_pairs_hook=pairs)
    except ValueError as error:
        return f"the body is refused: {str(error)[:200]}"
    return None if isinstance(value, dict) else "the body is not a JSON object"


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def create_app(tracking_uri: str, scope: RunScope):
    """The door: an ASGI app forwarding what the scope allows to ``tracking_uri``."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}

    upstream = httpx.URL(tracking_uri.rstrip("/"))

    def refused(request: Request, raw_path: bytes, why: str, status_code: int = 403) -> Response:
        log.warning("refused a user script's %s %r: %s", request.method, raw_path[:300], why)
        code = "PERMISSION_DENIED" if status_code == 403 else "RESOURCE_EXHAUSTED"
        return JSONResponse({"error_code": code, "message": why}, status_code=status_code)

    async def forward(request: Request) -> Response:
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        path = request.url.path  # what the router decoded: with the checks below, the raw path's meaning
        refusal = path_refusal(raw_path) or query_refusal(request.query_params.multi_items())
        if refusal:
            return refused(request, raw_path, refusal)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop_by_hop}
        if ARTIFACTS.match(path):
            # An artifact's bytes stream upstream, counted against the run's allowance; its path is the check.
            refusal = scope.refusal(request.method, path, dict(request.query_params), b"")
            if refusal:
                return refused(request, raw_path, refusal)
            if request.method in ("GET", "HEAD", "DELETE"):
                body: bytes | AsyncIterator[bytes] = b""  # nothing to send, not even an empty chunked body
            else:
                length = request.headers.get("content-length")
                if length is not None:
                    if not length.isdigit() or scope.artifact_bytes + int(length) > scope.max_artifact_bytes:
                        return refused(request, raw_path, allowance_exceeded(scope), 413)
                    headers["content-length"] = length  # so the body streams as sent, not re-chunked
                body = counted(request, scope)
        else:
            received = bytearray()
            async for chunk in request.stream():
                received += chunk
                if len(received) > MAX_API_BODY_BYTES:
                    return refused(request, raw_path, f"a tracking API body over {MAX_API_BODY_BYTES} bytes", 413)
            body = bytes(received)
            refusal = scope.refusal(request.method, path, dict(request.query_params), body)
            if refusal:
                return refused(request, raw_path, refusal)
        # Upstream gets the very bytes that were checked (an httpx URL built from a decoded path would
        # be normalized again on the way).
        query = request.scope.get("query_string") or b""
        target = upstream.copy_with(
            raw_path=upstream.raw_path.rstrip(b"/") + raw_path + (b"?" + query if query else b"")
        )
        try:
            answer = await client.request(request.method, target, content=body, headers=headers)
        except ArtifactAllowanceExceeded as error:
            return refused(request, raw_path, str(error), 413)
        if answer.status_code == 200:
            scope.learn(request.method, path, answer.content)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in hop_by_hop | {"content-encoding"}}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


class ArtifactAllowanceExceeded(Exception):
    """The run's artifacts would hold more than its allowance."""


def counted(request: Any, scope: RunScope) -> AsyncIterator[bytes]:
    """The request's body as it streams, stopped once the run's artifacts would exceed their allowance."""

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            scope.artifact_bytes += len(chunk)
            if scope.artifact_bytes > scope.max_artifact_bytes:
                raise ArtifactAllowanceExceeded(allowance_exceeded(scope))
            yield chunk

    return chunks()


def allowance_exceeded(scope: RunScope) -> str:
    return (
        f"the run's artifacts would hold more than {scope.max_artifact_bytes} bytes (what the script's disk "
        "may hold, ASGARD_SCRIPT_MAX_DISK_MB)"
    )


class Gateway:
    """The door served on a unix socket in a thread of this process, for the length of a ``with`` block."""

    def __init__(self, tracking_uri: str, scope: RunScope, socket_path: Path) -> None:
        self.tracking_uri, self.scope, self.socket_path = tracking_uri, scope, socket_path

    def serving(self) -> contextlib.AbstractContextManager[Path]:
        return serving_door(create_app(self.tracking_uri, self.scope), self.socket_path, "mlflow-gateway")


def serving_on_tcp(tracking_uri: str, scope: RunScope, host: str) -> contextlib.AbstractContextManager[int]:
    """The same door on ``host`` at a free TCP port (yielded), for a script pod in a cluster, whose
    NetworkPolicy lets it reach this address and port only (``asgard.operators.script_pod``)."""
    return serving_door_on_tcp(create_app(tracking_uri, scope), host, "mlflow-gateway-tcp")
