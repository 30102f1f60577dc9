"""The Docker engine and OCI registries: a client, a login, a build and a push.

Clients come from the docker provider's ``DockerHook`` (basic auth from a Docker connection) or,
for ECR, from the amazon provider's ``EcrHook.get_temporary_credentials`` (which masks the token in
logs); the login goes through the engine and nothing is written to a config file. No network is
used inside a build: everything it installs is in its context.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from asgard.core.errors import InputError
from asgard.core.settings import get_settings

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

# Docker's own API version negotiation: the daemon may be older than the client library.
DOCKER_API_VERSION = "auto"
# Registry answers that say "not now" rather than "no".
TRANSIENT_MARKERS = (
    "connection refused",
    "timeout",
    "timed out",
    "eof",
    "reset by peer",
    "tls handshake",
    "temporary failure",
    "no such host",
    "i/o timeout",
)
# A gateway status (502, 503, 504) as a number of its own: not the digits of a port (127.0.0.1:50383).
TRANSIENT_STATUS = re.compile(r"(?<![\d.:])50[234](?!\d)")
# Answers that say "no" whatever else the message holds (a refused login's text may name a timeout).
REFUSAL = re.compile(r"(?<![\d.:])40[13](?!\d)|unauthorized|forbidden|denied")


class ImageBuildError(RuntimeError):
    """The Docker engine failed to build the image (the message carries its last output)."""


class RegistryError(RuntimeError):
    """The registry could not be reached or did not answer in time: trying again may help."""


class RegistryRefusedError(AirflowFailException):
    """The registry said no (a refused login, an unknown repository): trying again cannot help."""


def docker_client(docker_url: str | None = None, docker_conn_id: str | None = None) -> docker.APIClient:
    """A Docker API client from the docker provider's hook (logged in when a connection is given)."""
    from airflow.providers.docker.hooks.docker import DockerHook

    url = docker_url or get_settings().docker_url
    return DockerHook(docker_conn_id=docker_conn_id, base_url=url, version=DOCKER_API_VERSION).api_client


def registry_of(image: str) -> str:
    """The registry host of an image reference (``host[:port]/repo:tag``)."""
    first = image.split("/", 1)[0]
    if "/" not in image or not ("." in first or ":" in first or first == "localhost"):
        raise InputError(f"image {image!r} names no registry host; push needs host[:port]/repository:tag")
    return first


def registry_client(
    image: str,
    *,
    registry_type: str | None = None,
    docker_conn_id: str = "asgard_registry",
    aws_conn_id: str = "aws_default",
    registry_ids: list[str] | None = None,
    docker_url: str | None = None,
) -> docker.APIClient:
    """A Docker client logged in to ``image``'s registry: a Docker connection's basic auth, or an ECR token."""
    import docker

    registry_type = registry_type or get_settings().registry_type
    registry = registry_of(image)
    if registry_type == "docker":
        try:
            return docker_client(docker_url, docker_conn_id)
        except docker.errors.APIError as error:
            raise _login_error(registry, f"the login of connection {docker_conn_id!r}", error) from error
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    client = docker_client(docker_url)
    credentials = EcrHook(aws_conn_id=aws_conn_id).get_temporary_credentials(registry_ids=registry_ids)
    if not credentials:
        raise RegistryRefusedError(f"ECR returned no credentials for registry ids {registry_ids}")
    token = next((c for c in credentials if c.registry == registry), credentials[0])
    try:
        client.login(username=token.username, password=token.password, registry=registry, reauth=True)
    except docker.errors.APIError as error:
        raise _login_error(registry, "the ECR token", error) from error
    log.info("logged in to %s with an ECR token (expires %s)", registry, token.expires_at)
    return client


def _login_error(registry: str, what: str, error: Exception) -> Exception:
    if is_transient(error):
        return RegistryError(f"registry {registry} is unreachable: {reason(error)}")
    return RegistryRefusedError(f"registry {registry} refused {what}: {reason(error)}")


def _registry_error(message: str, transient: bool) -> Exception:
    return RegistryError(message) if transient else RegistryRefusedError(message)


def reason(error: Exception) -> str:
    """What the engine said (its explanation when it gave one)."""
    return getattr(error, "explanation", None) or str(error)


def is_transient(error: Exception | str) -> bool:
    """Whether an engine or registry error says "not now" rather than "no"."""
    text = (error if isinstance(error, str) else reason(error)).lower()
    if REFUSAL.search(text):
        return False
    return bool(TRANSIENT_STATUS.search(text)) or any(marker in text for marker in TRANSIENT_MARKERS)


def local_image_labels(client: docker.APIClient, reference: str) -> dict[str, str] | None:
    """The labels of a local image (None when the engine does not have it)."""
    import docker

    try:
        image = client.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return None
    return (image.get("Config") or {}).get("Labels") or {}


def pull(client: docker.APIClient, image: str) -> bool:
    """Pull ``image`` from its registry; False (logged) when the registry does not have it or cannot answer."""
    import docker

    repository, tag = image.rsplit(":", 1)
    try:
        client.pull(repository, tag=tag)
    except docker.errors.DockerException as error:
        log.info("%s is not in the registry (%s)", image, reason(error))
        return False
    return True


def build_image(
    client: docker.APIClient,
    folder: Path,
    reference: str,
    *,
    build_args: dict[str, str],
    labels: dict[str, str],
    progress: Callable[[str], None] = log.info,
) -> str:
    """Build the context in ``folder`` as ``reference``; the image id.

    No network inside the build: every wheel it installs is in the context.
    """
    image_id, tail = None, []
    for chunk in _stream(
        client.build(
            path=str(folder),
            tag=reference,
            buildargs=build_args,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
    ):
        if "error" in chunk:
            raise ImageBuildError(f"building {reference} failed: {chunk['error'].strip()}\n" + "\n".join(tail[-15:]))
        line = (chunk.get("stream") or "").rstrip()
        if line:
            tail.append(line)
            progress(line)
        image_id = (chunk.get("aux") or {}).get("ID", image_id)
    if image_id is None:
        raise ImageBuildError(f"building {reference} ended without an image:\n" + "\n".join(tail[-15:]))
    return image_id


def _stream(chunks: Any) -> Iterator[dict[str, Any]]:
    yield from chunks


def push_image(
    client: docker.APIClient,
    image: str,
    *,
    attempts: int = 3,
    wait_seconds: float = 2.0,
    progress: Callable[[str], None] = log.info,
) -> str:
    """Push ``image`` (retrying transient failures) and return the digest the registry recorded.

    A registry only creates a tag once the manifest is uploaded, after every layer: a failed push
    leaves no tag behind.
    """
    import tenacity

    repository, tag = image.rsplit(":", 1)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=wait_seconds, max=30),
        retry=tenacity.retry_if_exception_type(RegistryError),
        reraise=True,
        before_sleep=lambda state: progress(f"push failed ({state.outcome.exception()}); retrying"),
    )
    return retrying(_push_once, client, repository, tag, progress)


def _push_once(client: docker.APIClient, repository: str, tag: str, progress: Callable[[str], None]) -> str:
    import docker

    digest = None
    try:
        for chunk in client.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                message = chunk["error"].strip()
                raise _registry_error(f"pushing {repository}:{tag} failed: {message}", is_transient(message))
            if chunk.get("status") in ("Pushed", "Layer already exists"):
                progress(f"{chunk['status']} {chunk.get('id', '')}")
            digest = (chunk.get("aux") or {}).get("Digest", digest)
    except docker.errors.APIError as error:
        raise _registry_error(f"pushing {repository}:{tag} failed: {error}", error.is_server_error()) from error
    except docker.errors.DockerException as error:  # the engine itself is unreachable
        raise RegistryError(f"pushing {repository}:{tag} failed: {error}") from error
    if not digest:
        raise RegistryError(f"pushing {repository}:{tag} ended without a digest from the registry")
    return digest
