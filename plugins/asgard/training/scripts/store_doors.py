"""A sandboxed script's way to the feature store in production: doors to its stores, with a reader's login.

In production the feature store is network services (Feast's registry and the gold layer's catalog
in PostgreSQL, the warehouse on S3) that a sandbox, which has no network, cannot reach, and whose
platform credentials it may not have. The platform's operator gives it instead a reader: a
PostgreSQL role that may only SELECT in those two databases, and S3 keys for reading (on real S3,
a read-only IAM user's). ``ASGARD_SCRIPT_STORE_ACCESS`` (JSON) holds that login, in the
environment of Airflow's workers only.

A script run gets one door per store: a unix socket the task serves, which the sandbox's launcher
forwards from a port on the sandbox's loopback. PostgreSQL's door reads the startup message itself:
it lets through only the reader, only to the feature store's two databases, without replication or
``options`` (anything else is a FATAL error naming why, sent by the door; the server never sees it),
sends upstream a startup message it built from what it checked, then relays; the server holds the
reader to SELECT. S3's is a read-only HTTP door: it passes on GET
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
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from asgard.core.doors import query_refusal, serving_door
from asgard.features.gold import PRODUCTION_CATALOG_NAME

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
    startup = PostgresStartup(access.user, frozenset({access.registry_database, access.gold_database}))
    relay = _Relay(sockets / "postgres.sock", access.postgres_host, access.postgres_port, startup)
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


def s3_refusal(method: str, path: str, query: dict[str, str], readable: str) -> str | None:
    """Why a request through the S3 door is refused (None: it reads within ``readable``).

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
        return None if _within(listed, prefix) else f"listing {listed!r} is outside {readable}"
    key = path.removeprefix(f"/{bucket}/") if path.startswith(f"/{bucket}/") else None
    if key is None or not _within(key, prefix):
        return f"{path} is outside {readable}, the part of S3 user scripts may read"
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
            request.method, scope["path"], dict(request.query_params), access.s3_readable
        )
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


# PostgreSQL's wire protocol (v3): a startup packet's codes, and how long one may be.
PROTOCOL_3 = 196608
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
MAX_STARTUP_BYTES = 10_000
# Startup parameters that would reach beyond a reader's session: a replication connection, or settings.
REFUSED_PARAMETERS = ("replication", "options")
# Connections one run may hold through the door at once: Feast needs one or two; the server's own
# connections (Airflow's, MLflow's) are not a script's to take. The reader role has a server-wide
# limit and a statement timeout as well (asgard.local.postgres).
MAX_CONNECTIONS = 8


class DoorRefusal(Exception):
    """Why the PostgreSQL door closes a connection (sent to the client as a FATAL error)."""


@dataclass(frozen=True)
class PostgresStartup:
    """Who may pass PostgreSQL's door: ``user`` (the reader), into one of ``databases``."""

    user: str
    databases: frozenset[str]

    def negotiate(self, client: socket.socket) -> bytes:
        """Read the client's startup (declining TLS and GSS encryption on the loopback door) and return the
        startup message to send upstream, built from the checked parameters; :class:`DoorRefusal` if not."""
        while True:
            code, payload = _startup_packet(client)
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                client.sendall(b"N")  # not on this hop; the client goes on in plain text or gives up
                continue
            if code == CANCEL_REQUEST:
                raise DoorRefusal("cancel requests are not relayed")
            if code != PROTOCOL_3:
                raise DoorRefusal(f"protocol {code >> 16}.{code & 0xFFFF} is not spoken here")
            return self._startup(_parameters(payload))

    def _startup(self, parameters: dict[str, str]) -> bytes:
        user = parameters.get("user")
        database = parameters.get("database") or user
        if user != self.user:
            raise DoorRefusal(f"the feature store's door lets in only {self.user}, not {user!r}")
        if database not in self.databases:
            allowed = ", ".join(sorted(self.databases))
            raise DoorRefusal(f"{database!r} is not one of the feature store's databases ({allowed})")
        refused = sorted(name for name in parameters if name in REFUSED_PARAMETERS or name.startswith("_pq_."))
        if refused:
            raise DoorRefusal(f"startup parameters {', '.join(refused)} are not open to user scripts")
        checked = {**parameters, "database": database}
        pairs = b"".join(name.encode() + b"\0" + value.encode() + b"\0" for name, value in checked.items())
        body = struct.pack("!i", PROTOCOL_3) + pairs + b"\0"
        return struct.pack("!i", len(body) + 4) + body

    @staticmethod
    def refuse(client: socket.socket, reason: str) -> None:
        """Send ``reason`` as PostgreSQL's FATAL error (SQLSTATE 28000), which clients show as they got it."""
        fields = (
            b"".join(
                kind + text.encode() + b"\0"
                for kind, text in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", f"asgard door: {reason}"))
            )
            + b"\0"
        )
        with contextlib.suppress(OSError):
            client.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)


def _startup_packet(client: socket.socket) -> tuple[int, bytes]:
    (length,) = struct.unpack("!i", _exactly(client, 4))
    if not 8 <= length <= MAX_STARTUP_BYTES:
        raise DoorRefusal(f"a startup packet of {length} bytes")
    packet = _exactly(client, length - 4)
    return struct.unpack("!i", packet[:4])[0], packet[4:]


def _parameters(payload: bytes) -> dict[str, str]:
    """A startup message's name/value pairs (NUL-terminated strings, then a final NUL)."""
    if not payload.endswith(b"\0"):
        raise DoorRefusal("a malformed startup message")
    fields = payload[:-1].split(b"\0")
    if fields == [b""]:
        return {}
    if len(fields) % 2 != 1 or fields[-1] != b"":
        raise DoorRefusal("a malformed startup message")
    try:
        pairs = [(fields[i].decode(), fields[i + 1].decode()) for i in range(0, len(fields) - 1, 2)]
    except UnicodeDecodeError:
        raise DoorRefusal("a startup message that is not UTF-8") from None
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names) or "" in names:
        raise DoorRefusal("a startup message with an empty or repeated parameter")
    return dict(pairs)


def _exactly(client: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = client.recv(count - len(data))
        if not chunk:
            raise DoorRefusal("the client left during the startup")
        data += chunk
    return data


class _Relay:
    """A unix socket whose connections, once their startup passes ``startup``, are piped to ``host:port``
    (one pair of threads each): PostgreSQL's door."""

    def __init__(self, path: Path, host: str, port: int, startup: PostgresStartup) -> None:
        self.address, self.startup = (host, port), startup
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        path.chmod(0o666)  # the sandbox's user connects to it
        self.server.listen(16)
        threading.Thread(target=self._accept, name=f"door-{path.stem}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)  # a startup that takes longer is no client's
        slot = self.slots.acquire(blocking=False)
        try:
            startup = self.startup.negotiate(client)
            if not slot:
                raise DoorRefusal(f"a run may hold {MAX_CONNECTIONS} connections at once; close one first")
            upstream = socket.create_connection(self.address, timeout=10)
        except DoorRefusal as refusal:
            log.warning("refused a user script's PostgreSQL connection: %s", refusal)
            self.startup.refuse(client, str(refusal))
            self._close(client, slot)
            return
        except OSError:
            self._close(client, slot)
            return
        upstream.sendall(startup)
        client.settimeout(None)
        upstream.settimeout(None)
        # The slot is given back when the server's side ends (the client left, or the server closed).
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump_back, args=(upstream, client), daemon=True).start()

    def _pump_back(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            _pump(upstream, client)
        finally:
            self._close(upstream, True)
            self._close(client, False)

    def _close(self, connection: socket.socket, slot: bool) -> None:
        with contextlib.suppress(OSError):
            connection.close()
        if slot:
            self.slots.release()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self.server.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
