"""Where the platform's files live, and how they are written so that no reader ever sees half of one.

A :class:`Location` is a local path or an ``s3://bucket/key`` URI, read through a pyarrow filesystem
(S3 with the credentials, region and endpoint of an Airflow AWS connection, through the amazon
provider's ``S3Hook``). Local files are written beside their target under a hidden temporary name
and renamed into place; an S3 object appears only once its upload is complete.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow.fs as pafs
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from asgard.core.settings import Settings


@dataclass(frozen=True)
class Location:
    """A local path or an ``s3://bucket/key`` URI, read through a pyarrow filesystem."""

    uri: str
    aws_conn_id: str = "aws_default"

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.uri.removeprefix("s3://").split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.uri.removeprefix("s3://").split("/", 1)[1]

    @property
    def path(self) -> str:
        """The path within :meth:`filesystem` (``bucket/key`` on S3)."""
        return self.uri.removeprefix("s3://") if self.is_s3 else self.uri

    @property
    def asset_uri(self) -> str:
        return self.uri if self.is_s3 else f"file://{self.uri}"

    def child(self, *names: str) -> Location:
        return Location(posixpath.join(self.uri, *names), self.aws_conn_id)

    def sibling(self, name: str) -> Location:
        return Location(posixpath.join(posixpath.dirname(self.uri), name), self.aws_conn_id)

    def filesystem(self) -> pafs.FileSystem:
        import pyarrow.fs as pafs

        return s3_filesystem(self.aws_conn_id) if self.is_s3 else pafs.LocalFileSystem()

    def write_bytes(self, data: bytes) -> Location:
        """Write ``data`` here atomically: readers see the old content or the whole new one."""
        if self.is_s3:
            with self.filesystem().open_output_stream(self.path) as stream:  # the object appears at close
                stream.write(data)
            return self
        target = Path(self.uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(target)
        partial.write_bytes(data)
        os.replace(partial, target)
        return self

    def read_bytes(self) -> bytes:
        with self.filesystem().open_input_stream(self.path) as stream:
            return stream.read()

    def write_parquet(self, frame: pd.DataFrame) -> Location:
        """Write ``frame`` here as Parquet, atomically."""
        import io

        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return self.write_bytes(buffer.getvalue())

    def read_parquet(self) -> pd.DataFrame:
        import pyarrow.parquet as pq

        return pq.read_table(self.path, filesystem=self.filesystem()).to_pandas()

    def s3_hook(self) -> S3Hook:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id)


def s3_filesystem(aws_conn_id: str) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with the credentials, region and endpoint of an Airflow AWS connection."""
    from urllib.parse import urlparse

    import pyarrow.fs as pafs
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from asgard.core.errors import InputError

    hook = S3Hook(aws_conn_id=aws_conn_id)
    if hook.get_session(region_name=hook.conn_region_name).get_credentials() is None:
        # The provider's get_credentials fails with an AttributeError then: say what is missing instead.
        raise InputError(f"the AWS connection {aws_conn_id!r} has no credentials (nor does this worker)")
    credentials = hook.get_credentials()
    options: dict[str, Any] = {
        "access_key": credentials.access_key,
        "secret_key": credentials.secret_key,
        "session_token": credentials.token,
        "region": hook.conn_region_name or "us-east-1",
    }
    endpoint = hook.conn_config.endpoint_url
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


def team_data_roots(team: str, settings: Settings) -> list[str]:
    """``<root>/<team>`` for each data root (``ASGARD_DATA_ROOTS``): the only places a team's requests
    read and write. A root of ``s3://`` alone gives each team a bucket of its name."""
    return [f"{root}{team}" if root.endswith("/") else f"{root}/{team}" for root in settings.data_root_list]


def platform_s3_prefixes(settings: Settings) -> list[str]:
    """The platform's own S3 prefixes (the production profile's, asgard.local.production, included):
    no request path names one, whatever the data roots say."""
    bucket = f"s3://{settings.s3_bucket}"
    prefixes = [settings.prediction_log_uri, settings.runs_root, settings.reports_root, settings.gold_warehouse_uri]
    prefixes += [f"{bucket}/mlflow", f"{bucket}/airflow-logs", f"{bucket}/asgard/build-contexts"]
    return [prefix.rstrip("/") for prefix in prefixes if prefix and prefix.startswith("s3://")]


def checked_data_path(uri: str, *, what: str, team: str, settings: Settings | None = None) -> str:
    """``uri`` (a local path, an ``s3://`` URI, or a path relative to the team's first data root, which a
    request names for ``team``) resolved, if it lies inside one of the team's data roots
    (:func:`team_data_roots`) and outside the platform's own folders and S3 prefixes; else an error
    naming the path, the team and its roots. Nothing is created: the team folder appears on first write."""
    from asgard.core.errors import InputError
    from asgard.core.settings import get_settings
    from asgard.core.team_settings import TEAM_NAME

    settings = settings or get_settings()
    if not TEAM_NAME.fullmatch(team or ""):
        raise InputError(f"{what} {uri}: {team!r} is not a team name")
    if not uri or "\x00" in uri:
        raise InputError(f"{what} {uri[:200]!r} is not a path")
    roots = team_data_roots(team, settings)
    named = uri
    if not uri.startswith(("/", "s3://")):
        uri = f"{roots[0]}/{uri}"  # relative: inside the team's first root (then checked as any other path)
        named = f"{named} (in {roots[0]})"
    if uri.startswith("s3://"):
        path = uri
        # S3 keys are names, not paths: "a/../b" is a key of its own, but readers (and people) take it
        # for b; refuse it rather than guess.
        if any(part in ("", ".", "..") for part in uri.removeprefix("s3://").rstrip("/").split("/")):
            raise InputError(f"{what} {named} has an empty, '.' or '..' part")
        for own in platform_s3_prefixes(settings):
            if _under(path, own):
                raise InputError(f"{what} {named} is inside the platform's own storage {own}")
        allowed = any(_under(path, root) for root in roots if root.startswith("s3://"))
    else:
        path = os.path.realpath(uri)  # .. and symlinks resolved: what would really be read or written
        for own in settings.protected_data_dirs:
            if _under(path, os.path.realpath(own)):
                raise InputError(f"{what} {named} is inside the platform's own folder {own}")
        allowed = any(_under(path, os.path.realpath(root)) for root in roots if not root.startswith("s3://"))
    if not allowed:
        raise InputError(
            f"{what} {named} is outside the data roots of team {team!r} ({', '.join(roots)}; "
            "each root of ASGARD_DATA_ROOTS holds one folder per team)"
        )
    return path


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(f"{folder}/")


def checked_connection(conn_id: str, *, settings: Settings | None = None) -> str:
    """An AWS connection id a request names, if the operator allows requests to use it."""
    from asgard.core.errors import InputError
    from asgard.core.settings import get_settings

    allowed = [item.strip() for item in (settings or get_settings()).allowed_aws_conn_ids.split(",") if item.strip()]
    if conn_id not in allowed:
        raise InputError(
            f"aws_conn_id {conn_id!r} is not one a request may use ({', '.join(allowed)}; ASGARD_ALLOWED_AWS_CONN_IDS)"
        )
    return conn_id


def partial_path(path: str | Path) -> Path:
    """A hidden temporary name beside ``path`` (one per process): renamed onto it when whole, never read."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    partial.write_text(text)
    os.replace(partial, path)
    return path


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` to ``path`` atomically: readers see the old file or the whole new one."""
    partial = partial_path(path)
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path
