"""A sandboxed script's way to the feature store in production: doors to its stores, with a reader's login.

In production the feature store is network services (Feast's registry and the gold layer's catalog
in PostgreSQL, the warehouse on S3) that a sandbox, which has no network, cannot reach, and whose
platform credentials it may not have. The platform's operator gives it instead a reader: a
PostgreSQL role that may only SELECT in those two databases, and S3 keys for reading (on real S3,
a read-only IAM user's). ``ASGARD_SCRIPT_STORE_ACCESS`` (JSON) holds that login, in the
environment of Airflow's workers only.

A script run gets one door per store: a unix socket the task relays to the store's address,
which the sandbox's launcher forwards from a port on the sandbox's loopback. The script's
``feature_store.yaml`` keeps its placeholders; the script's environment fills them with the
reader's login and those loopback addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

from asgard.features.gold import PRODUCTION_CATALOG_NAME

STORE_ACCESS_VARIABLE = "ASGARD_SCRIPT_STORE_ACCESS"
# The ports the stores answer on inside the sandbox (its own loopback).
POSTGRES_PORT_INSIDE = 5432
S3_PORT_INSIDE = 9000


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
            f"{catalog}S3__ACCESS_KEY_ID": self.s3_access_key,
            f"{catalog}S3__SECRET_ACCESS_KEY": self.s3_secret_key,
            f"{catalog}S3__REGION": self.s3_region,
        }

    def doors(self) -> dict[str, tuple[str, int, int]]:
        """Door name -> (host, port) outside and the port inside."""
        s3 = urlparse(self.s3_endpoint)
        return {
            "postgres": (self.postgres_host, self.postgres_port, POSTGRES_PORT_INSIDE),
            "s3": (s3.hostname or "127.0.0.1", s3.port or (443 if s3.scheme == "https" else 80), S3_PORT_INSIDE),
        }


@contextlib.contextmanager
def opened(access: StoreAccess, sockets: Path) -> Iterator[dict[int, str]]:
    """The doors to ``access``'s stores, as unix sockets in ``sockets`` relayed while open; yields
    port inside -> socket file name, for the launcher's forwards."""
    relays = []
    try:
        forwards = {}
        for name, (host, port, inside) in access.doors().items():
            relay = _Relay(sockets / f"{name}.sock", host, port)
            relays.append(relay)
            forwards[inside] = f"{name}.sock"
        yield forwards
    finally:
        for relay in relays:
            relay.close()


class _Relay:
    """A unix socket whose connections are piped to ``host:port`` (one pair of threads each)."""

    def __init__(self, path: Path, host: str, port: int) -> None:
        self.address = (host, port)
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
            try:
                upstream = socket.create_connection(self.address, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()

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
