"""Build a registered model version's serving image on a Docker engine, and push it to a registry.

``DockerBuildServingImageOperator`` renders the context from MLflow and builds
``<repository>:<model_name>-v<version>``; a local image already built from the same version is
reused, not rebuilt. ``RegistryPushImageOperator`` logs in through the provider hooks (a Docker
connection's basic auth, or the amazon provider's ECR token), pushes with retries on transient
failures and returns the digest the registry recorded. A registry only creates a tag once the
manifest is uploaded, after every layer: a failed push leaves no tag behind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from asgard.errors import InputError
from asgard.settings import get_settings

if TYPE_CHECKING:
    import docker
    from airflow.sdk import Context

# Docker's own API version negotiation: the daemon may be older than the client library.
DOCKER_API_VERSION = "auto"


def docker_client(docker_url: str | None, docker_conn_id: str | None = None) -> docker.APIClient:
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
    registry_type: str | None,
    docker_conn_id: str,
    aws_conn_id: str,
    registry_ids: list[str] | None = None,
    docker_url: str | None = None,
    log: Any = None,
) -> docker.APIClient:
    """A Docker client logged in to ``image``'s registry: a Docker connection's basic auth, or an ECR token.

    The ECR token comes from the amazon provider's ``EcrHook.get_temporary_credentials`` (which masks
    it in logs); the login goes through the engine, and nothing is written to a config file.
    """
    import docker

    registry_type = registry_type or get_settings().registry_type
    registry = registry_of(image)
    if registry_type == "docker":
        try:
            return docker_client(docker_url, docker_conn_id)
        except docker.errors.APIError as error:
            if _unreachable(error):
                raise AirflowFailException(f"registry {registry} is unreachable: {_reason(error)}") from error
            raise AirflowFailException(
                f"registry {registry} refused the login of connection {docker_conn_id!r}: {_reason(error)}"
            ) from error
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    client = docker_client(docker_url)
    credentials = EcrHook(aws_conn_id=aws_conn_id).get_temporary_credentials(registry_ids=registry_ids)
    if not credentials:
        raise AirflowFailException(f"ECR returned no credentials for registry ids {registry_ids}")
    token = next((c for c in credentials if c.registry == registry), credentials[0])
    try:
        client.login(username=token.username, password=token.password, registry=registry, reauth=True)
    except docker.errors.APIError as error:
        if _unreachable(error):
            raise AirflowFailException(f"registry {registry} is unreachable: {_reason(error)}") from error
        raise AirflowFailException(f"registry {registry} refused the ECR token: {_reason(error)}") from error
    if log is not None:
        log.info("logged in to %s with an ECR token (expires %s)", registry, token.expires_at)
    return client


class DockerBuildServingImageOperator(BaseOperator):
    """Build the serving image of one registered model version (idempotent per version).

    :param model_name: registered model name
    :param version: model version number; ``None`` resolves ``alias``
    :param alias: registry alias used when no version is given (default ``champion``)
    :param repository: image repository (default: the platform's serving repository)
    :param base_image: the Dockerfile's base (default: the platform's serving base image)
    :param docker_url: Docker engine API address (default: the platform's engine)
    :param registry_type, docker_conn_id, aws_conn_id: how to log in to the repository's registry, to
        reuse an image another worker already built and pushed for this version
    """

    template_fields: Sequence[str] = ("model_name", "version", "alias", "repository", "base_image")

    def __init__(
        self,
        *,
        model_name: str,
        version: str | None = None,
        alias: str | None = None,
        repository: str | None = None,
        base_image: str | None = None,
        docker_url: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        registry_type: str | None = None,
        docker_conn_id: str = "asgard_registry",
        aws_conn_id: str = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.registry_type = registry_type
        self.docker_conn_id = docker_conn_id
        self.aws_conn_id = aws_conn_id
        self.model_name = model_name
        self.version = version
        self.alias = alias
        self.repository = repository
        self.base_image = base_image
        self.docker_url = docker_url
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from asgard import serving_image
        from asgard.hooks.mlflow import MlflowHook

        settings = get_settings()
        hook = MlflowHook(self.mlflow_conn_id)
        try:
            ref = serving_image.resolve_model_version(hook, self.model_name, self.version or None, self.alias or None)
            image = f"{self.repository or settings.serving_repository}:{ref.tag}"
        except InputError as error:
            raise AirflowFailException(str(error)) from error
        client = docker_client(self.docker_url)
        existing = serving_image.find_image(client, image, ref) or self._pull_built(image, ref)
        result = {"image": image, **ref.to_dict()}
        if existing:
            self.log.info(
                "%s is already built from %s v%s (run %s): reusing it", image, ref.name, ref.version, ref.run_id
            )
            labels = client.inspect_image(existing)["Config"]["Labels"] or {}
            return {**result, "image_id": existing, "built": False, "flavor": labels.get("io.asgard.serving.flavor")}
        with tempfile.TemporaryDirectory(prefix="asgard-image-") as scratch:
            try:
                built = serving_image.render_context(hook, ref, Path(scratch) / "context")
            except InputError as error:
                raise AirflowFailException(str(error)) from error
            self.log.info("serving %s: %s", built.info["flavor"], built.info["flavor_reason"])
            image_id = serving_image.build_image(
                client,
                built.folder,
                image,
                build_args=serving_image.build_arguments(built, self.base_image or settings.serving_base_image),
                labels=built.labels,
                progress=lambda line: self.log.info("%s", line),
            )
        self.log.info("built %s (%s)", image, image_id)
        return {**result, "image_id": image_id, "built": True, "flavor": built.info["flavor"]}

    def _pull_built(self, image: str, ref: Any) -> str | None:
        """The image of this version from the registry, if it was built and pushed before (any worker)."""
        import docker

        from asgard import serving_image

        try:
            client = registry_client(
                image,
                registry_type=self.registry_type,
                docker_conn_id=self.docker_conn_id,
                aws_conn_id=self.aws_conn_id,
                docker_url=self.docker_url,
            )
            repository, tag = image.rsplit(":", 1)
            client.pull(repository, tag=tag)
        except (AirflowFailException, AirflowNotFoundException, docker.errors.DockerException) as error:
            self.log.info("%s is not in the registry yet (%s): building it", image, _reason(error))
            return None
        return serving_image.find_image(client, image, ref)


class RegistryPushImageOperator(BaseOperator):
    """Push an image and return its digest; ECR (token from the ECR hook) or basic auth (Docker connection).

    :param image: ``host[:port]/repository:tag``
    :param registry_type: ``docker`` (log in with ``docker_conn_id``) or ``ecr`` (``aws_conn_id``)
    :param registry_ids: ECR registry (account) ids to get a token for (default: the account's own)
    """

    template_fields: Sequence[str] = ("image", "registry_type")

    def __init__(
        self,
        *,
        image: str,
        registry_type: str | None = None,
        docker_conn_id: str = "asgard_registry",
        aws_conn_id: str = "aws_default",
        registry_ids: list[str] | None = None,
        docker_url: str | None = None,
        push_attempts: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.registry_type = registry_type
        self.docker_conn_id = docker_conn_id
        self.aws_conn_id = aws_conn_id
        self.registry_ids = registry_ids
        self.docker_url = docker_url
        self.push_attempts = push_attempts

    @cached_property
    def client(self) -> docker.APIClient:
        return registry_client(
            self.image,
            registry_type=self.registry_type,
            docker_conn_id=self.docker_conn_id,
            aws_conn_id=self.aws_conn_id,
            registry_ids=self.registry_ids,
            docker_url=self.docker_url,
            log=self.log,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from asgard import serving_image

        try:
            registry_of(self.image)
        except InputError as error:
            raise AirflowFailException(str(error)) from error
        try:
            digest = serving_image.push_image(
                self.client, self.image, attempts=self.push_attempts, progress=lambda line: self.log.info("%s", line)
            )
        except serving_image.PushError as error:
            if error.transient:
                raise  # the task's own retries may still succeed
            raise AirflowFailException(str(error)) from error
        repository = self.image.rsplit(":", 1)[0]
        self.log.info("pushed %s as %s", self.image, digest)
        return {"image": self.image, "digest": digest, "reference": f"{repository}@{digest}"}


def _reason(error: Exception) -> str:
    return getattr(error, "explanation", None) or str(error)


def _unreachable(error: Exception) -> bool:
    from asgard.serving_image import TRANSIENT_MARKERS

    return any(marker in _reason(error).lower() for marker in TRANSIENT_MARKERS)
