"""The production profile's Trino: a single-node server over the gold layer, fetched, configured and run.

The server comes from Maven Central by its coordinates (``scripts/trino_server.sh``: the slim
``trino-server-core`` and the ``iceberg`` and ``memory`` connectors) into a folder every checkout on
the machine shares (``<machine_dir>/trino/<version>``, like the serving base image it is fetched once,
during set-up). Each home has its own configuration and data folder (``<home>/trino``):

- ``catalog/iceberg.properties``: exactly what ``./asgard trino-catalog`` prints
  (:func:`asgard.features.gold.trino_catalog`): the JDBC catalog pyiceberg's ``SqlCatalog`` writes
  in PostgreSQL, its warehouse on S3; its secrets come from the server's environment, never a file.
- ``catalog/memory.properties``: where Feast uploads the entity rows of a training set.
- ``access-control.properties`` and ``rules.json``: Trino's file-based access control. The platform's
  user reads the gold layer (writes stay pyiceberg's) and may do anything elsewhere; the script
  reader's user (the PostgreSQL reader role's name, what a user script's door presents) may SELECT in
  ``iceberg.gold`` and nothing else: no other catalog or schema, no writes, no other user's queries.

One node is coordinator and worker, bound to loopback, with a modest heap (``ASGARD_TRINO_HEAP_MB``):
the machine's cores and memory are Airflow's, Celery's and MLflow's too. A user adds workers by
running more servers with ``coordinator=false`` and the same ``discovery.uri`` (README, Trino).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from asgard.core.dag_defaults import DEFAULT_ARGS
from asgard.core.settings import REPO_ROOT, Settings
from asgard.local.processes import ServiceError, write_private

TRINO_VERSION = "476"
# Trino 476 is built for Java 24 and refuses an older runtime.
MIN_JAVA = 24
# The longest one query may run, queued time included: half of what its task may (a training set is one
# query per pass of 100k entity rows, which took seconds each at 1M).
QUERY_TIME_LIMIT_MINUTES = int(DEFAULT_ARGS["execution_timeout"].total_seconds() // 120)
FETCH_SCRIPT = REPO_ROOT / "scripts" / "trino_server.sh"
JVM_ROOT = Path("/usr/lib/jvm")


def server_dir(settings: Settings) -> Path:
    """Where the server is unpacked: the machine's folder (shared by every checkout), or, where this
    user cannot write there, the checkout's cache."""
    machine = settings.machine_dir
    shared = machine / "trino" / TRINO_VERSION
    creatable = not machine.exists() and os.access(machine.parent, os.W_OK)
    if shared.exists() or os.access(machine, os.W_OK) or creatable:
        return shared
    return settings.cache_dir / "trino" / TRINO_VERSION


def ensure_server(settings: Settings) -> Path:
    """The server's folder, fetched first when missing (``scripts/trino_server.sh``; idempotent)."""
    folder = server_dir(settings)
    if (folder / "bin" / "launcher").exists():
        return folder
    result = subprocess.run(
        ["bash", str(FETCH_SCRIPT), str(folder)], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        raise ServiceError(f"trino: could not fetch the server: {(result.stderr or result.stdout).strip()[-2000:]}")
    return folder


def java_version(java_home: Path) -> int | None:
    """The feature release of the JDK at ``java_home`` (from its ``release`` file), or None."""
    try:
        text = (java_home / "release").read_text()
    except OSError:
        return None
    found = re.search(r'^JAVA_VERSION="(\d+)', text, re.MULTILINE)
    return int(found.group(1)) if found else None


def find_java_home(settings: Settings) -> Path:
    """The JDK Trino runs on: ``ASGARD_TRINO_JAVA_HOME``, or the newest one under /usr/lib/jvm that is new enough."""
    if settings.trino_java_home is not None:
        version = java_version(settings.trino_java_home)
        if version is None or version < MIN_JAVA:
            raise ServiceError(
                f"trino: ASGARD_TRINO_JAVA_HOME={settings.trino_java_home} is Java {version or 'unknown'}; "
                f"Trino {TRINO_VERSION} needs Java {MIN_JAVA} or newer"
            )
        return settings.trino_java_home
    found = {}
    for home in JVM_ROOT.glob("*") if JVM_ROOT.is_dir() else []:
        version = java_version(home)
        if version is not None and (home / "bin" / "java").exists() and not home.is_symlink():
            found[home] = version
    usable = sorted((version, str(home)) for home, version in found.items() if version >= MIN_JAVA)
    if not usable:
        seen = ", ".join(f"{home.name} (Java {version})" for home, version in found.items()) or "none"
        raise ServiceError(
            f"trino: Trino {TRINO_VERSION} needs Java {MIN_JAVA} or newer; JDKs under {JVM_ROOT}: {seen}. "
            "Install one (e.g. Temurin 25) or point ASGARD_TRINO_JAVA_HOME at it"
        )
    return Path(usable[-1][1])


def home_dir(settings: Settings) -> Path:
    return settings.home / "trino"


def etc_dir(settings: Settings) -> Path:
    return home_dir(settings) / "etc"


def jvm_options(settings: Settings) -> list[str]:
    """The JVM's options: a fixed heap, UTC, and the settings Trino's own deployment guide asks for."""
    return [
        "-server",
        f"-Xmx{settings.trino_heap_mb}M",
        "-XX:+UseG1GC",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:-OmitStackTraceInFastThrow",
        # Half of Trino's recommended 512M: one small node compiles less.
        "-XX:ReservedCodeCacheSize=256M",
        # ASGARD_TRINO_QUICK_START: the client compiler only. Start-up to ready took 9 CPU-seconds instead
        # of 22 (two busy shared cores: 30 s instead of 120 s wall), but a warm 4M-row aggregation 4-6 s
        # instead of ~1 s: for short-lived stacks (the tests), not for training sets at scale.
        *(["-XX:TieredStopAtLevel=1"] if settings.trino_quick_start else []),
        "-XX:PerMethodRecompilationCutoff=10000",
        "-XX:PerBytecodeRecompilationCutoff=10000",
        "-Djdk.attach.allowAttachSelf=true",
        # Trino measures its objects with an agent it loads itself: say so, rather than warn at each start.
        "-XX:+EnableDynamicAgentLoading",
        "--enable-native-access=ALL-UNNAMED",
        "-Djdk.nio.maxCachedBufferSize=2000000",
        "-Dfile.encoding=UTF-8",
        "-Duser.timezone=UTC",
    ]


def server_properties(settings: Settings) -> dict[str, str]:
    """``config.properties``: one node, coordinator and worker, on loopback; queries within the heap."""
    query_memory = settings.trino_heap_mb * 3 // 10
    return {
        "coordinator": "true",
        "node-scheduler.include-coordinator": "true",
        "http-server.http.port": str(settings.trino_port),
        "discovery.uri": settings.trino_url,
        "query.max-memory": f"{query_memory}MB",
        "query.max-memory-per-node": f"{query_memory}MB",
        # A slow query (an overloaded Trino, a join gone wrong, one a killed task left running) ends as Trino's
        # own EXCEEDED_TIME_LIMIT, which the task names (asgard.features.store.offline_store_errors), rather than
        # as Airflow's timeout killing the task without saying why. The default of every session; only the
        # platform's user may set session properties (access_rules).
        "query.max-run-time": f"{QUERY_TIME_LIMIT_MINUTES}m",
    }


def access_rules(platform_user: str, reader_user: str) -> dict:
    """Trino's file-based access control: the platform's user reads the gold layer and may do anything
    elsewhere (Feast's uploads to the memory catalog) and set session properties, the reader only SELECTs in
    the gold schema (the first matching rule applies; a user no rule matches may do nothing)."""
    from asgard.features.gold import GOLD_NAMESPACE

    return {
        "catalogs": [
            # Writes to the gold layer stay pyiceberg's: through Trino even the platform only reads it.
            {"user": platform_user, "catalog": "iceberg", "allow": "read-only"},
            {"user": platform_user, "allow": "all"},
            {"user": reader_user, "catalog": "iceberg", "allow": "read-only"},
        ],
        "schemas": [
            {"user": platform_user, "owner": True},
            {"user": reader_user, "catalog": "iceberg", "schema": GOLD_NAMESPACE, "owner": False},
        ],
        "tables": [
            {"user": platform_user, "privileges": ["SELECT", "INSERT", "DELETE", "UPDATE", "OWNERSHIP"]},
            {"user": reader_user, "catalog": "iceberg", "schema": GOLD_NAMESPACE, "privileges": ["SELECT"]},
        ],
        # Everyone may run queries; only the platform sees and ends others' (their text names tables).
        "queries": [{"user": platform_user, "allow": ["execute", "kill", "view"]}, {"allow": ["execute"]}],
        "system_information": [{"user": platform_user, "allow": ["read"]}],
        # Session properties (a query's time limit among them) are the platform's to set: no rule, no setting.
        "system_session_properties": [{"user": platform_user, "allow": True}],
        "catalog_session_properties": [{"user": platform_user, "allow": True}],
    }


def write_config(
    settings: Settings, iceberg_catalog: str, *, platform_user: str = "asgard", reader_user: str | None = None
) -> Path:
    """Write ``<home>/trino/etc`` (node, JVM, server, catalogs, access control); returns the folder."""
    etc = etc_dir(settings)
    (etc / "catalog").mkdir(parents=True, exist_ok=True)
    node = {
        "node.environment": "asgard",
        "node.id": f"asgard-{settings.database_prefix}",
        "node.data-dir": str(home_dir(settings) / "data"),
        # The HTTP server listens on loopback only (airlift binds to node.bind-ip).
        "node.bind-ip": settings.bind_host,
        "node.internal-address": settings.bind_host,
    }
    files = {
        "node.properties": _properties(node),
        "jvm.config": "\n".join(jvm_options(settings)) + "\n",
        "config.properties": _properties(server_properties(settings)),
        "catalog/iceberg.properties": iceberg_catalog,
        "catalog/memory.properties": _properties({"connector.name": "memory", "memory.max-data-per-node": "256MB"}),
        "access-control.properties": _properties(
            {"access-control.name": "file", "security.config-file": str(etc / "rules.json")}
        ),
        "rules.json": json.dumps(access_rules(platform_user, reader_user or f"{settings.database_prefix}_reader")),
    }
    for name, text in files.items():
        write_private(etc / name, text)
    return etc


def _properties(values: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in values.items())


def launcher_argv(settings: Settings) -> list[str]:
    """Trino's launcher in the foreground: it execs the JVM, which the service's supervisor then holds."""
    return [
        str(server_dir(settings) / "bin" / "launcher"),
        "run",
        "--etc-dir",
        str(etc_dir(settings)),
        "--data-dir",
        str(home_dir(settings) / "data"),
    ]


def java_environment(java_home: Path, path: str) -> dict[str, str]:
    """What the launcher needs to run the right JVM (it takes ``java`` from PATH)."""
    return {"JAVA_HOME": str(java_home), "PATH": f"{java_home / 'bin'}{os.pathsep}{path}"}


def server_answers(settings: Settings) -> bool:
    """Whether the coordinator has started (``/v1/info`` says ``"starting": false``)."""
    from asgard.features.store import OfflineStoreUnavailableError, trino_info

    try:
        trino_info(settings.trino_url, timeout=3.0)
    except OfflineStoreUnavailableError:
        return False
    return True
