"""A sandboxed script's way to the feature store in production: doors to its stores, with a reader's login.

In production the feature store is network services (Feast's registry and the gold layer's catalog
in PostgreSQL, the warehouse on S3) that a sandbox, which has no network, cannot reach, and whose
platform credentials it may not have. The platform's operator gives it instead a reader: a
PostgreSQL role that may only SELECT in those two databases, and S3 keys for reading (on real S3,
a read-only IAM user's). ``ASGARD_SCRIPT_STORE_ACCESS`` (JSON) holds that login, in the
environment of Airflow's workers only.

A script run gets one door per store: a unix socket the task serves, which the sandbox's launcher
forwards from a port on the sandbox's loopback. PostgreSQL's (:mod:`asgard.training.scripts.
postgres_door`) lets through only the reader's startup into the feature store's two databases, and
ends the run's sessions with it; the server holds the reader to SELECT. S3's is a read-only HTTP door: it passes on GET
and HEAD of objects in the gold warehouse, and listings within it, signed with the reader's keys,
which never enter the sandbox (the script signs with keys that open nothing); it answers everything
else AccessDenied itself, whatever the keys may do (an S3-compatible server may not enforce them;
moto does not). The script's ``feature_store.yaml`` keeps its placeholders; the script's
environment fills them with the reader's PostgreSQL login and the doors' loopback addresses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from asgard.core.doors import query_refusal, serving_door
from asgard.features.gold import PRODUCTION_CATALOG_NAME
from asgard.training.scripts.postgres_door import PostgresDoor, PostgresStartup

log = logging.getLogger(__name__)

STORE_ACCESS_VARIABLE = "ASGARD_SCRIPT_STORE_ACCESS"
# The ports the stores answer on inside the sandbox (its own loopback).
POSTGRES_PORT_INSIDE = 5432
S3_PORT_INSIDE = 9000
# The S3 keys a script signs with: the door checks and re-signs each request, so they need open nothing.
DOOR_KEY = "asgard-s3-door"


@dataclass(frozen=True)
class StoreAccess:
    """The reader's login to the feature store's services, and where they are."""

    postgres_host: str
    postgres_port: int
    user: str
    password: str
    registry_database: str
    gold_database: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    # What the S3 door lets the script read: "<bucket>/<prefix>" (the gold warehouse).
    s3_readable: str
    s3_region: str = "us-east-1"
    # One run's view of the gold layer (asgard.training.production_views.production_script_view): the schema its
    # sessions in the gold database read the catalog from, and all it may read of ``s3_readable``: the objects
    # ("<bucket>/<key>") of ``s3_files`` and those within its own folder ``s3_own``.
    gold_schema: str | None = None
    s3_files: frozenset[str] | None = None
    s3_own: str | None = None

    @classmethod
    def from_env(cls) -> StoreAccess | None:
        raw = os.environ.get(STORE_ACCESS_VARIABLE)
        return cls(**json.loads(raw)) if raw else None

    def as_env_value(self) -> str:
        return json.dumps(self.__dict__)

    def script_variables(self) -> dict[str, str]:
        """What fills the script's ``feature_store.yaml`` placeholders and its catalog configuration:
        the reader's login, at the doors' addresses inside the sandbox."""
        login = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        database = f"postgresql+psycopg://{login}@127.0.0.1:{POSTGRES_PORT_INSIDE}"
        catalog = f"PYICEBERG_CATALOG__{PRODUCTION_CATALOG_NAME.upper()}__"
        return {
            "ASGARD_FEAST_REGISTRY_URI": f"{database}/{self.registry_database}",
            f"{catalog}URI": f"{database}/{self.gold_database}",
            f"{catalog}S3__ENDPOINT": f"http://127.0.0.1:{S3_PORT_INSIDE}",
            # Keys that open nothing: the S3 door signs what it passes on with the reader's own.
            f"{catalog}S3__ACCESS_KEY_ID": DOOR_KEY,
            f"{catalog}S3__SECRET_ACCESS_KEY": DOOR_KEY,
            f"{catalog}S3__REGION": self.s3_region,
        }


@contextlib.contextmanager
def opened(access: StoreAccess, sockets: Path) -> Iterator[dict[int, str]]:
    """The doors to ``access``'s stores, as unix sockets in ``sockets`` served while open; yields
    port inside -> socket file name, for the launcher's forwards."""
    search_paths = ((access.gold_database, access.gold_schema),) if access.gold_schema else ()
    startup = PostgresStartup(access.user, frozenset({access.registry_database, access.gold_database}), search_paths)
    relay = PostgresDoor(sockets / "postgres.sock", access.postgres_host, access.postgres_port, startup)
    try:
        app = s3_reading_app(access)
        with serving_door(app, sockets / "s3.sock", "s3-reader"):
            yield {POSTGRES_PORT_INSIDE: "postgres.sock", S3_PORT_INSIDE: "s3.sock"}
    finally:
        relay.close()


# Query parameters of a listing (ListObjects v1/v2); a GET on the bucket with any other is refused.
LISTING_PARAMETERS = {
    "list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after", "marker",
    "encoding-type", "fetch-owner",
}  # fmt: skip


def s3_refusal(
    method: str,
    path: str,
    query: dict[str, str],
    readable: str,
    files: frozenset[str] | None = None,
    own: str | None = None,
) -> str | None:
    """Why a request through the S3 door is refused (None: it reads within ``readable``, and when ``files`` is
    given, one of those objects (``<bucket>/<key>``) or one within the folder ``own``; a listing only of that
    folder: a listing of others would name the keys, sizes and ETags of files the run may not read).

    ``path`` is the decoded path of a path-style request (``/<bucket>/<key>``)."""
    if method not in ("GET", "HEAD"):
        return f"{method} is not open to user scripts: the feature store is theirs to read, not to change"
    bucket, _, prefix = readable.strip("/").partition("/")
    parts = path.split("/")
    if any(part in (".", "..") for part in parts):
        return f"{path} has a relative segment"
    if path.rstrip("/") == f"/{bucket}":  # the bucket itself, or a listing: only of keys within the prefix
        if not query or list(query) == ["location"]:  # HeadBucket, GetBucketLocation: clients' probes
            return None
        unknown = sorted(set(query) - LISTING_PARAMETERS)
        if unknown:
            return f"bucket request with {', '.join(unknown)} is not open to user scripts"
        listed = query.get("prefix", "")
        if not _within(listed, prefix):
            return f"listing {listed!r} is outside {readable}"
        if files is not None and not (own and _within(f"{bucket}/{listed}", own)):
            return f"listing {listed!r} is not open to a script the gate judges on held-back labels"
        return None
    key = path.removeprefix(f"/{bucket}/") if path.startswith(f"/{bucket}/") else None
    if key is None or not _within(key, prefix):
        return f"{path} is outside {readable}, the part of S3 user scripts may read"
    name = f"{bucket}/{key}"
    if files is not None and name not in files and not (own and _within(name, own)):
        return f"{name} is not a file of the gold tables this run's view holds (the labels the gate judges are not)"
    return None


def _within(key: str, prefix: str) -> bool:
    return not prefix or key.startswith(prefix.rstrip("/") + "/")


def s3_reading_app(access: StoreAccess):
    """The S3 door: an ASGI app passing on to ``access``'s endpoint the requests :func:`s3_refusal`
    allows, signed with the reader's keys (the script's own signature, made with keys that open
    nothing, is dropped), and streaming back the answer."""
    import httpx
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    endpoint = access.s3_endpoint.rstrip("/")
    signer = S3SigV4Auth(Credentials(access.s3_access_key, access.s3_secret_key), "s3", access.s3_region)
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=10.0))
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}
    # What the script's signature made or covered: the door signs anew for the endpoint.
    resigned = {"host", "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "content-length"}
    not_passed = hop_by_hop | resigned

    async def forward(request: Request) -> Response:
        scope = request.scope
        refusal = query_refusal(request.query_params.multi_items()) or s3_refusal(
            request.method, scope["path"], dict(request.query_params), access.s3_readable, access.s3_files,
            access.s3_own,
        )  # fmt: skip
        # Not read: a body is refused by its announcement, never held in this process.
        announced = request.headers.get("content-length", "0") not in ("", "0")
        if refusal is None and (announced or "transfer-encoding" in request.headers):
            refusal = "a read has no body"
        if refusal is not None:
            log.warning("refused a user script's S3 %s %s: %s", request.method, scope["path"], refusal)
            error = f"<Error><Code>AccessDenied</Code><Message>{escape(refusal)}</Message></Error>"
            return Response(error, status_code=403, media_type="application/xml")
        query = scope["query_string"].decode("latin-1")
        url = endpoint + scope["raw_path"].decode("latin-1") + (f"?{query}" if query else "")
        passed = {k: v for k, v in request.headers.items() if k.lower() not in not_passed}
        signed = AWSRequest(method=request.method, url=url, headers=passed)
        signer.add_auth(signed)
        outgoing = client.build_request(request.method, url, headers=dict(signed.headers.items()))
        upstream = await client.send(outgoing, stream=True)
        kept = {k: v for k, v in upstream.headers.items() if k.lower() not in hop_by_hop}
        background = BackgroundTask(upstream.aclose)
        return StreamingResponse(upstream.aiter_raw(), upstream.status_code, headers=kept, background=background)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)
