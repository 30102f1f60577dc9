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


def checked_data_path(uri: str, *, what: str, settings: Settings | None = None) -> str:
    """``uri`` (a local path or an ``s3://`` URI a request names), if it lies under one of the configured
    data roots and outside the platform's own folders; else an error naming both."""
    from asgard.core.errors import InputError
    from asgard.core.settings import get_settings

    settings = settings or get_settings()
    roots = settings.data_root_list
    if uri.startswith("s3://"):
        allowed = any(
            uri.startswith(root if root.endswith("/") else f"{root}/") for root in roots if root.startswith("s3://")
        )
        path = uri
    else:
        path = os.path.realpath(uri)  # .. and symlinks resolved: what would really be read or written
        local_roots = [os.path.realpath(root) for root in roots if not root.startswith("s3://")]
        allowed = any(path == root or path.startswith(f"{root}/") for root in local_roots)
        for own in settings.protected_data_dirs:
            if path == str(own) or path.startswith(f"{os.path.realpath(own)}/"):
                raise InputError(f"{what} {uri} is inside the platform's own folder {own}")
    if not allowed:
        raise InputError(f"{what} {uri} is outside the data roots ({', '.join(roots)}; ASGARD_DATA_ROOTS)")
    return path


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
