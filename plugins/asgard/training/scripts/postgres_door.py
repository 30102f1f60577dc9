"""PostgreSQL's door for a sandboxed script: the reader's startup into the feature store, and nothing else.

The door reads the startup message itself: it lets through only the reader, only into the feature
store's two databases, with a short list of session parameters (no replication, no ``options``, no
setting of the server's), and sends upstream a startup message it built from what it checked, then
relays. Anything else is a FATAL error naming why, sent by the door; the server never sees it.

A script is code we do not trust, so the door also bounds what it may hold: 8 sessions of a run at once
(and a few threads answering the rest), a startup that ends within 10 seconds, and no session that
outlives the script's side of it. A reader may change its own ``statement_timeout``, and PostgreSQL
does not notice a client gone while its query runs: when the script's side of a session closes, or
the run ends, the door cancels what the session runs (a cancel request with the key the server gave
it) and closes it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# PostgreSQL's wire protocol (v3): a startup packet's codes, and how long one may be.
PROTOCOL_3 = 196608
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
MAX_STARTUP_BYTES = 10_000
# The session parameters a client may send (libpq's, psycopg's, JDBC's usual ones); GUC names are
# case-insensitive. Anything else (options, replication, a server setting) is refused.
STARTUP_PARAMETERS = frozenset(
    {"user", "database", "application_name", "client_encoding", "datestyle", "timezone", "extra_float_digits"}
)
# Sessions one run may hold through the door at once: Feast needs one or two; the server's own
# connections (Airflow's, MLflow's) are not a script's to take. The reader role has a server-wide
# limit as well (asgard.local.postgres).
MAX_CONNECTIONS = 8
# Connections past that limit still get a FATAL error saying so, from at most this many threads.
MAX_REFUSING = 4
STARTUP_SECONDS = 10.0


class DoorRefusal(Exception):
    """Why the PostgreSQL door closes a connection (sent to the client as a FATAL error)."""


@dataclass(frozen=True)
class PostgresStartup:
    """Who may pass PostgreSQL's door: ``user`` (the reader), into one of ``databases``; a session in a
    database of ``search_paths`` (database, schema) starts on that schema (a run's view of the gold layer)."""

    user: str
    databases: frozenset[str]
    search_paths: tuple[tuple[str, str], ...] = ()

    def negotiate(self, client: socket.socket) -> bytes:
        """Read the client's startup (declining TLS and GSS encryption on the loopback door, once each)
        within :data:`STARTUP_SECONDS` and return the startup message to send upstream, built from the
        checked parameters; :class:`DoorRefusal` if not."""
        deadline, declined = time.monotonic() + STARTUP_SECONDS, set()
        while True:
            code, payload = _startup_packet(client, deadline)
            if code in (SSL_REQUEST, GSSENC_REQUEST) and code not in declined:
                declined.add(code)
                client.sendall(b"N")  # not on this hop; the client goes on in plain text or gives up
                continue
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                raise DoorRefusal("an encryption request asked twice")
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
        refused = sorted(name for name in parameters if name.lower() not in STARTUP_PARAMETERS)
        if refused:
            raise DoorRefusal(f"startup parameters {', '.join(refused)[:300]} are not open to user scripts")
        checked = {**parameters, "database": database}
        schema = dict(self.search_paths).get(database)
        if schema is not None:  # set by the door, never by the client (whose options are refused above)
            checked["options"] = f"-c search_path={schema}"
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


def _startup_packet(client: socket.socket, deadline: float) -> tuple[int, bytes]:
    (length,) = struct.unpack("!i", _exactly(client, 4, deadline))
    if not 8 <= length <= MAX_STARTUP_BYTES:
        raise DoorRefusal(f"a startup packet of {length} bytes")
    packet = _exactly(client, length - 4, deadline)
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
    if len({name.lower() for name in names}) != len(names) or "" in names:
        raise DoorRefusal("a startup message with an empty or repeated parameter")
    return dict(pairs)


def _exactly(client: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DoorRefusal(f"the startup took more than {STARTUP_SECONDS:.0f} seconds")
        client.settimeout(left)
        try:
            chunk = client.recv(count - len(data))
        except TimeoutError:
            raise DoorRefusal(f"the startup took more than {STARTUP_SECONDS:.0f} seconds") from None
        if not chunk:
            raise DoorRefusal("the client left during the startup")
        data += chunk
    return data


class _Session:
    """One relayed connection: the script's socket, the server's, and the key the server gave for it."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.key: bytes | None = None  # BackendKeyData: the backend's process id and secret key
        self._ended = False
        self._lock = threading.Lock()

    def end(self, address: tuple[str, int]) -> bool:
        """Cancel what the session runs and close both sides (once); True for the call that did."""
        with self._lock:  # both pumps and close() may end it at once: one of them does
            if self._ended:
                return False
            self._ended = True
        if self.key is not None:
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=5) as cancel:
                cancel.sendall(struct.pack("!ii", 16, CANCEL_REQUEST) + self.key)
        for side in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                side.close()
        return True


def _backend_key(buffer: bytes) -> tuple[bytes | None, bytes]:
    """The BackendKeyData ('K') among the complete messages at the start of ``buffer``, and what is left
    unread (an incomplete message)."""
    while len(buffer) >= 5:
        kind, length = buffer[:1], struct.unpack("!i", buffer[1:5])[0]
        if len(buffer) < 1 + length:
            break
        if kind == b"K" and length == 12:
            return buffer[5:13], b""
        buffer = buffer[1 + length :]
    return None, buffer


class PostgresDoor:
    """A unix socket whose connections, once their startup passes ``startup``, are relayed to
    ``host:port``: PostgreSQL's door for one run. :meth:`close` ends every session it relays."""

    def __init__(self, path: Path, host: str, port: int, startup: PostgresStartup) -> None:
        self.address, self.startup = (host, port), startup
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refusing = threading.BoundedSemaphore(MAX_REFUSING)
        self.sessions: set[_Session] = set()
        self.closed = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        path.chmod(0o666)  # the sandbox's user connects to it
        self.server.listen(16)
        threading.Thread(target=self._accept, name=f"door-{path.stem}", daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                if self.closed.is_set():
                    return
                time.sleep(0.1)  # out of file descriptors, say: the door stays open for the next one
                continue
            # A thread per connection, within the run's limit; past it a few threads say why, and a
            # flood beyond those is closed unanswered.
            for slots, slot in ((self.slots, True), (self.refusing, False)):
                if slots.acquire(blocking=False):
                    try:
                        threading.Thread(target=self._serve, args=(client, slot), daemon=True).start()
                    except RuntimeError:  # no thread to be had: the connection goes, the door stays
                        slots.release()
                        client.close()
                    break
            else:
                client.close()

    def _serve(self, client: socket.socket, slot: bool) -> None:
        upstream = None
        try:
            startup = self.startup.negotiate(client)
            if not slot:
                raise DoorRefusal(f"a run may hold {MAX_CONNECTIONS} connections at once; close one first")
            upstream = socket.create_connection(self.address, timeout=10)
            upstream.sendall(startup)
        except (DoorRefusal, OSError) as problem:
            if isinstance(problem, DoorRefusal):
                log.warning("refused a user script's PostgreSQL connection: %s", problem)
                self.startup.refuse(client, str(problem))
            for side in (client, upstream):
                if side is not None:
                    with contextlib.suppress(OSError):
                        side.close()
            (self.slots if slot else self.refusing).release()
            return
        client.settimeout(None)
        upstream.settimeout(None)
        session = _Session(client, upstream)
        self.sessions.add(session)
        if self.closed.is_set():  # the run ended meanwhile
            self._end(session)
            return
        threading.Thread(target=self._to_server, args=(session,), daemon=True).start()
        threading.Thread(target=self._to_client, args=(session,), daemon=True).start()

    def _to_server(self, session: _Session) -> None:
        """The script's bytes to the server; when the script's side closes, the session ends."""
        with contextlib.suppress(OSError):
            while data := session.client.recv(65536):
                session.upstream.sendall(data)
        self._end(session)

    def _to_client(self, session: _Session) -> None:
        """The server's bytes to the script, noting the session's cancel key on the way."""
        buffer = b""
        with contextlib.suppress(OSError):
            while data := session.upstream.recv(65536):
                session.client.sendall(data)
                if session.key is None and len(buffer) < 65536:
                    session.key, buffer = _backend_key(buffer + data)
        self._end(session)

    def _end(self, session: _Session) -> None:
        if session.end(self.address):
            self.sessions.discard(session)
            self.slots.release()

    def close(self) -> None:
        """Stop taking connections and end every session (their queries cancelled): the run is over."""
        self.closed.set()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self.server.close()
        for session in list(self.sessions):
            self._end(session)
