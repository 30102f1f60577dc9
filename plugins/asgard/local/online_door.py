"""The online store's door for serving containers: reading features from Redis, and nothing else.

A serving container runs a model's own code in a network namespace of its own (``asgard.deploy.
docker_target``), so it cannot reach Redis, which listens on the host's loopback and holds the Celery
broker beside the features. A model that reads features by entity id gets this door instead: a unix
socket in a folder mounted read-only into its container. The door speaks Redis's protocol, RESP2 only
(clients connect with ``?protocol=2``: ``HELLO`` is refused), and passes on only what the serving
app's reader sends (``asgard_serving.online``): ``EVALSHA`` of the reader's own script (and ``SCRIPT
LOAD`` of exactly that script), ``HMGET``, ``PING`` and ``CLIENT SETINFO``. Every other command —
``SELECT``, ``KEYS``, writes, ``EVAL`` of any other script, ``CONFIG``, ``AUTH`` — is answered ``-ERR``
by the door itself and never reaches Redis. The door logs in upstream as a read-only ACL user of its
own (``ensure_reader_login``: the reader's commands on feature keys; its password never enters a
container) and selects the online store's database before the first command, so a model reads
exactly Feast's feature hashes.

Served by the router process (``python -m asgard.local.router``), which lives as long as the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from asgard.core.settings import Settings

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
# The router's environment: where to serve the door, and the Redis URL (with its login) behind it.
DOOR_FOLDER_VARIABLE = "ASGARD_ONLINE_DOOR_FOLDER"
DOOR_UPSTREAM_VARIABLE = "ASGARD_ONLINE_DOOR_UPSTREAM"
# A command bigger than this ends the connection before more of it is held in the router's memory
# (the reader's largest, HMGET_EACH over 10k ids and 64 fields, is under a megabyte).
MAX_ITEMS = 100_000
MAX_BULK_BYTES = 1024 * 1024
MAX_COMMAND_BYTES = 8 * 1024 * 1024
# What one read may ask of Redis (whose one thread the Celery broker shares): keys (ten times the
# serving app's default ASGARD_SERVING_MAX_ENTITIES), fields per key, and the cells of keys x fields.
# A model asking more than that stalls the platform's Redis; the reader never does.
MAX_KEYS, MAX_FIELDS, MAX_CELLS = 10_000, 1_024, 1_000_000
# Connections one door relays at once (each is one of Redis's clients too), and those past it that are
# told why (for a few seconds each); more are closed at once.
MAX_CONNECTIONS, MAX_REFUSING = 64, 8


class Refused(Exception):
    """A command the door does not pass on (answered ``-ERR``; the connection stays)."""


class Broken(Exception):
    """Input that is no RESP2 a client sends (the connection ends)."""


def reader_script() -> bytes:
    """The serving app's script (``HMGET`` of each key), the one script a model may run."""
    from asgard_serving.online import HMGET_EACH

    return HMGET_EACH.encode()


class Policy:
    """Which commands pass: the serving reader's, checked on their names and, for scripts, their hash."""

    def __init__(self, script: bytes) -> None:
        self.script = script
        self.sha = hashlib.sha1(script).hexdigest().encode()

    def check(self, command: list[bytes]) -> None:
        name = command[0].upper()
        if name == b"EVALSHA" and len(command) >= 3 and command[1].lower() == self.sha:
            keys = int(command[2]) if command[2].isdigit() and len(command[2]) <= 6 else -1
            if not 0 <= keys <= len(command) - 3:
                raise Refused("EVALSHA's key count does not match its arguments")
            self._bounded(keys, len(command) - 3 - keys)
            return
        if name == b"SCRIPT" and len(command) == 3 and command[1].upper() == b"LOAD" and command[2] == self.script:
            return
        if name == b"HMGET" and len(command) >= 3:
            self._bounded(1, len(command) - 2)
            return
        if name == b"PING" and len(command) <= 2:
            return
        if name == b"CLIENT" and len(command) == 4 and command[1].upper() == b"SETINFO":
            return
        shown = name.decode(errors="replace")[:40]
        raise Refused(f"{shown} is not open to models (they read feature hashes through the serving app's script)")

    @staticmethod
    def _bounded(keys: int, fields: int) -> None:
        if keys > MAX_KEYS or fields > MAX_FIELDS or keys * fields > MAX_CELLS:
            raise Refused(
                f"a read of {keys} keys x {fields} fields: at most {MAX_KEYS} keys, {MAX_FIELDS} fields and "
                f"{MAX_CELLS} of both at once"
            )


async def read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One client command (an array of bulk strings), or None at the end of the stream."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*") or not line.endswith(b"\r\n"):
        raise Broken("commands must be RESP arrays of bulk strings")
    count = _number(line[1:-2], MAX_ITEMS)
    if count < 1:
        raise Broken("an empty command")
    items, total = [], 0
    for _ in range(count):
        header = await reader.readline()
        if not header.startswith(b"$") or not header.endswith(b"\r\n"):
            raise Broken("command arguments must be bulk strings")
        size = _number(header[1:-2], MAX_BULK_BYTES)
        total += size
        if total > MAX_COMMAND_BYTES:
            raise Broken(f"a command over {MAX_COMMAND_BYTES} bytes")
        item = await reader.readexactly(size + 2)
        if item[-2:] != b"\r\n":
            raise Broken("a bulk string without its end")
        items.append(item[:-2])
    return items


async def copy_reply(upstream: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
    """Copy exactly one RESP2 reply (nested arrays included) from Redis to the client."""
    line = await upstream.readline()
    if not line.endswith(b"\r\n"):
        raise Broken("Redis ended the connection")
    client.write(line)
    kind = line[:1]
    if kind == b"$":
        size = int(line[1:-2])
        if size >= 0:
            client.write(await upstream.readexactly(size + 2))
    elif kind == b"*":
        for _ in range(max(int(line[1:-2]), 0)):
            await copy_reply(upstream, client)
    elif kind not in (b"+", b"-", b":"):
        raise Broken(f"an unexpected reply type {kind!r}")


def _number(text: bytes, most: int) -> int:
    if not text.lstrip(b"-").isdigit():
        raise Broken("a length that is not a number")
    value = int(text)
    if value > most:
        raise Broken(f"a length over {most}")
    return value


def _command(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(item), item) for item in items)


class OnlineStoreDoor:
    """The door on ``folder/redis.sock``, relaying what :class:`Policy` allows to ``upstream`` (a redis:// URL)."""

    def __init__(self, folder: Path, upstream: str, policy: Policy) -> None:
        self.folder, self.policy = folder, policy
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.database = int(parts.path.strip("/") or 0)
        self.connections = self.refusing = 0

    async def _login(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        hello = []
        if self.password is not None:
            hello.append(
                _command(b"AUTH", *([self.username.encode()] if self.username else []), self.password.encode())
            )
        hello.append(_command(b"SELECT", str(self.database).encode()))
        writer.write(b"".join(hello))
        for _ in hello:
            line = await reader.readline()
            if not line.startswith(b"+"):
                writer.close()
                raise ConnectionError(f"the online store refused the door's login: {line[:200]!r}")
        return reader, writer

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_writer = None
        if self.connections >= MAX_CONNECTIONS:
            if self.refusing >= MAX_REFUSING:  # a flood: closed unanswered, no descriptor held
                client_writer.close()
                return
            self.refusing += 1
            try:
                await self._refuse(client_reader, client_writer, f"at most {MAX_CONNECTIONS} connections at once")
            finally:
                self.refusing -= 1
            return
        self.connections += 1  # the door's one event loop: no lock needed
        try:
            upstream_reader, upstream_writer = await self._login()
            while (command := await read_command(client_reader)) is not None:
                try:
                    self.policy.check(command)
                except Refused as refusal:
                    log.warning("refused a serving container's Redis command: %s", refusal)
                    client_writer.write(b"-ERR asgard door: " + str(refusal).encode() + b"\r\n")
                else:
                    upstream_writer.write(_command(*command))
                    await copy_reply(upstream_reader, client_writer)
                await client_writer.drain()
        except Broken as error:
            with contextlib.suppress(OSError):
                client_writer.write(b"-ERR asgard door: " + str(error).encode() + b"\r\n")
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as error:
            log.info("online store door connection ended: %s", error)
        finally:
            self.connections -= 1
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    with contextlib.suppress(OSError):
                        writer.close()

    @staticmethod
    async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, why: str) -> None:
        """Answer each command ``why`` for a few seconds, then close: a client reads the reason instead of
        a reset connection, and no refused connection is held for long."""
        with contextlib.suppress(OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, Broken):
            async with asyncio.timeout(5):
                while await read_command(reader) is not None:
                    writer.write(f"-ERR asgard door: {why}\r\n".encode())
                    await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    def serve_forever(self) -> threading.Thread:
        """Serve the door in a thread of this process (it ends with the process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        socket_path = self.folder / SOCKET_NAME
        socket_path.unlink(missing_ok=True)
        started = threading.Event()

        async def main() -> None:
            server = await asyncio.start_unix_server(self._serve, path=str(socket_path))
            os.chmod(socket_path, 0o666)  # the serving containers' user connects to it
            os.chmod(self.folder, 0o755)
            started.set()
            async with server:
                await server.serve_forever()

        thread = threading.Thread(target=lambda: asyncio.run(main()), name="online-store-door", daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError(f"the online store's door did not open at {socket_path}")
        log.info("online store door open at %s for %s:%s db %s", socket_path, self.host, self.port, self.database)
        return thread


# What the door's own Redis login may do, beside the door's checks: the reader's commands, on feature
# keys only (Feast's keys end in the project's name). ACLs limit commands and keys, not databases.
# (CLIENT SETINFO, which the door passes, is left out: Redis 7.0 does not know it, and clients ignore its
# refusal either way.)
READER_COMMANDS = ("ping", "select", "hmget", "evalsha", "script|load")


def ensure_reader_login(admin_url: str, user: str, password: str, project: str) -> None:
    """Make (or reset) ``user``: a Redis ACL user that may only read feature hashes of ``project``."""
    import redis

    rules = ["reset", "on", f">{password}", f"~*{project}", "resetchannels", "-@all"]
    try:
        with redis.Redis.from_url(admin_url) as admin:
            admin.execute_command("ACL", "SETUSER", user, *rules, *(f"+{command}" for command in READER_COMMANDS))
    except redis.RedisError as error:
        raise ConnectionError(f"redis: cannot make the online store's reader login {user} ({error})") from None


def prepare_reader_login(settings: Settings, user: str, password: str) -> str:
    """The door's login for ``settings``' online store, made (or reset) now; what was done, to log."""
    import yaml

    from asgard.features.store import store_yaml
    from asgard.local.processes import ServiceError

    project = yaml.safe_load(store_yaml(settings))["project"]
    try:
        ensure_reader_login(settings.online_redis_url, user, password, project)
    except ConnectionError as error:
        raise ServiceError(str(error)) from None
    return f"redis: the online store's door logs in as {user} (it reads {project}'s feature keys only)"


def reader_login_url(admin_url: str, user: str, password: str) -> str:
    """``admin_url`` (the platform's, at the online store's database) as ``user``: the door's upstream."""
    from urllib.parse import quote

    parts = urlsplit(admin_url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}:{parts.port or 6379}"
    return parts._replace(netloc=netloc).geturl()
