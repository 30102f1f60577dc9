"""Build a registered model version's serving image on a Docker engine, and push it to a registry.

``DockerBuildServingImageOperator`` renders the context from MLflow and builds
``<repository>:<model_name>-v<version>``; an image already built from the same version (on this
engine, or pushed by another worker) is reused, not rebuilt. ``RegistryPushImageOperator`` logs in
through the provider hooks (a Docker connection's basic auth, or the amazon provider's ECR token),
pushes with retries on transient failures and returns the digest the registry recorded.
:func:`serving_image_tasks` picks the builder by setting (``ASGARD_IMAGE_BUILDER``): these two, or
a Kaniko pod (``asgard.operators.kaniko``) that pushes as it builds, then
``KanikoPushedImageOperator`` pinning what it pushed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from asgard.core.settings import get_settings

if TYPE_CHECKING:
    import docker
    from airflow.sdk import Context

    from asgard.registry.versions import ModelVersionRef


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
    :param check_model: called with the context and the model name before anything is read: it raises to
        refuse (``deploy_model``: the run's user may deploy that model, the one its conf names)
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
        check_model: Callable[[Any, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_model = check_model
        self.model_name = model_name
        self.version = version
        self.alias = alias
        self.repository = repository
        self.base_image = base_image
        self.docker_url = docker_url
        self.mlflow_conn_id = mlflow_conn_id
        self.registry_type = registry_type
        self.docker_conn_id = docker_conn_id
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from asgard.hooks.docker import build_image, docker_client
        from asgard.hooks.mlflow import MlflowHook
        from asgard.registry.versions import resolve_model_version
        from asgard.serving import image as serving_image

        if self.check_model is not None:
            self.check_model(context, self.model_name)
        settings = get_settings()
        hook = MlflowHook(self.mlflow_conn_id)
        ref = resolve_model_version(hook, self.model_name, self.version or None, self.alias or None)
        image = f"{self.repository or settings.serving_repository}:{serving_image.image_tag(ref.name, ref.version)}"
        client = docker_client(self.docker_url)
        existing = serving_image.find_image(client, image, ref) or self._pull_built(image, ref)
        if existing:
            self.log.info(
                "%s is already built from %s v%s (run %s): reusing it", image, ref.name, ref.version, ref.run_id
            )
            labels = client.inspect_image(existing)["Config"]["Labels"] or {}
            flavor = labels.get("io.asgard.serving.flavor")
            return serving_image.BuiltImage(
                image, **ref.to_dict(), built=False, flavor=flavor, image_id=existing
            ).to_dict()
        with tempfile.TemporaryDirectory(prefix="asgard-image-") as scratch:
            rendered = serving_image.render_context(hook, ref, Path(scratch) / "context")
            self.log.info("serving %s: %s", rendered.info["flavor"], rendered.info["flavor_reason"])
            image_id = build_image(
                client,
                rendered.folder,
                image,
                build_args=serving_image.build_arguments(rendered, self.base_image or settings.serving_base_image),
                labels=rendered.labels,
                progress=lambda line: self.log.info("%s", line),
            )
        self.log.info("built %s (%s)", image, image_id)
        return serving_image.BuiltImage(
            image, **ref.to_dict(), built=True, flavor=rendered.info["flavor"], image_id=image_id
        ).to_dict()

    def _pull_built(self, image: str, ref: ModelVersionRef) -> str | None:
        """The image of this version from the registry, if it was built and pushed before (any worker)."""
        from airflow.sdk.exceptions import AirflowException

        from asgard.hooks.docker import RegistryError, pull, registry_client
        from asgard.serving.image import find_image

        try:
            client = registry_client(
                image,
                registry_type=self.registry_type,
                docker_conn_id=self.docker_conn_id,
                aws_conn_id=self.aws_conn_id,
                docker_url=self.docker_url,
            )
        except (RegistryError, AirflowException) as error:
            self.log.info("cannot look for %s in the registry (%s): building it", image, error)
            return None
        return find_image(client, image, ref) if pull(client, image) else None


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
        from asgard.hooks.docker import registry_client

        return registry_client(
            self.image,
            registry_type=self.registry_type,
            docker_conn_id=self.docker_conn_id,
            aws_conn_id=self.aws_conn_id,
            registry_ids=self.registry_ids,
            docker_url=self.docker_url,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from asgard.hooks.docker import push_image, registry_of
        from asgard.serving.image import PushedImage

        registry_of(self.image)  # an image without a registry host is refused before any login
        digest = push_image(
            self.client, self.image, attempts=self.push_attempts, progress=lambda line: self.log.info("%s", line)
        )
        repository = self.image.rsplit(":", 1)[0]
        self.log.info("pushed %s as %s", self.image, digest)
        return PushedImage(self.image, digest, f"{repository}@{digest}").to_dict()


class KanikoPushedImageOperator(BaseOperator):
    """What a Kaniko build pushed, pinned by the digest it reported: the push step's result when the
    builder pushed already (the deploy reads the same :class:`PushedImage` either way).

    :param build_task_id: the Kaniko task whose result (a ``BuiltImage`` with its digest) to pin
    """

    def __init__(self, *, build_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.build_task_id = build_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from asgard.serving.image import BuiltImage

        built = BuiltImage.from_dict(context["ti"].xcom_pull(task_ids=self.build_task_id))
        return pushed_by_builder(built).to_dict()


def pushed_by_builder(built: Any) -> Any:
    """The :class:`PushedImage` of an image its builder pushed (Kaniko), from the digest it reported."""
    from asgard.serving.image import PushedImage

    if not built.digest or not built.digest.startswith("sha256:"):
        raise RuntimeError(f"the builder of {built.image} reported no digest ({built.digest!r}): nothing to deploy")
    repository = built.image.rsplit(":", 1)[0]
    return PushedImage(built.image, built.digest, f"{repository}@{built.digest}")


def serving_image_tasks(
    *, model_name: str, version: str, alias: str, check_model: Callable[[Any, str], None] | None = None
) -> tuple[BaseOperator, BaseOperator]:
    """``build_image`` and ``push_image`` for the configured builder (read when the DAG is parsed);
    ``check_model`` is the builder's check before it reads the model."""
    settings = get_settings()
    if settings.image_builder == "kaniko":
        from asgard.operators.kaniko import KanikoBuildServingImageOperator

        build = KanikoBuildServingImageOperator(
            task_id="build_image",
            model_name=model_name,
            version=version,
            alias=alias,
            base_image=settings.serving_base_image,
            context_bucket=settings.s3_bucket,
            aws_conn_id=settings.aws_conn_id,
            registry_secret=settings.kaniko_registry_secret,
            namespace=settings.kaniko_namespace,
            kubernetes_conn_id=settings.kubernetes_conn_id,
            check_model=check_model,
        )
        return build, KanikoPushedImageOperator(task_id="push_image", build_task_id="build_image")
    build = DockerBuildServingImageOperator(
        task_id="build_image", model_name=model_name, version=version, alias=alias, check_model=check_model
    )
    push = RegistryPushImageOperator(task_id="push_image", image="{{ ti.xcom_pull(task_ids='build_image')['image'] }}")
    return build, push
