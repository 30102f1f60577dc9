"""Build (and push) a serving image inside Kubernetes with Kaniko, for clusters without a Docker socket.

The build context is rendered exactly as for the Docker engine (``asgard.serving.image``), packed
as a tarball and uploaded to S3 through the amazon provider's ``S3Hook``; a Kaniko pod builds it
and pushes ``<repository>:<model>-v<version>``. ECR credentials come from the pod's service
account (IRSA, Kaniko's built-in ECR helper); other registries from a ``kubernetes.io/dockerconfigjson``
secret mounted as Kaniko's Docker config. Kaniko writes the pushed digest to the container's
termination message, which becomes the task's result.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from asgard.core.settings import get_settings

KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
DOCKER_CONFIG_DIR = "/kaniko/.docker"


class KanikoBuildServingImageOperator(KubernetesPodOperator):
    """Build and push the serving image of one registered model version in a Kaniko pod.

    :param context_bucket: S3 bucket for build contexts (the pod's service account can read it)
    :param registry_secret: name of a ``dockerconfigjson`` secret for basic-auth registries
        (``None`` for ECR, where the service account's IAM role is used)
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "model_name", "version", "alias")

    def __init__(
        self,
        *,
        model_name: str,
        version: str | None = None,
        alias: str | None = None,
        repository: str | None = None,
        base_image: str = "python:3.11-slim",
        context_bucket: str,
        context_prefix: str = "asgard/build-contexts",
        aws_conn_id: str = "aws_default",
        aws_region: str | None = None,
        registry_secret: str | None = None,
        kaniko_image: str = KANIKO_IMAGE,
        namespace: str = "asgard-builds",
        service_account_name: str = "asgard-image-builder",
        mlflow_conn_id: str = "mlflow_default",
        check_model: Callable[[Any, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        volumes, mounts = [], []
        if registry_secret:
            volumes.append(
                k8s.V1Volume(
                    name="docker-config",
                    secret=k8s.V1SecretVolumeSource(
                        secret_name=registry_secret,
                        items=[k8s.V1KeyToPath(key=".dockerconfigjson", path="config.json")],
                    ),
                )
            )
            mounts.append(k8s.V1VolumeMount(name="docker-config", mount_path=DOCKER_CONFIG_DIR, read_only=True))
        super().__init__(
            namespace=namespace,
            name="build-serving-image",
            image=kaniko_image,
            arguments=[],
            service_account_name=service_account_name,
            labels={"app.kubernetes.io/part-of": "asgard", "app.kubernetes.io/component": "image-build"},
            env_vars=[k8s.V1EnvVar(name="AWS_REGION", value=aws_region)] if aws_region else [],
            container_resources=k8s.V1ResourceRequirements(
                requests={"cpu": "1", "memory": "2Gi", "ephemeral-storage": "4Gi"},
                limits={"cpu": "2", "memory": "4Gi", "ephemeral-storage": "8Gi"},
            ),
            # Kaniko unpacks the base image as root inside its own container; it needs no privilege.
            container_security_context=k8s.V1SecurityContext(allow_privilege_escalation=False, privileged=False),
            volumes=volumes,
            volume_mounts=mounts,
            active_deadline_seconds=1800,
            on_finish_action="delete_succeeded_pod",
            get_logs=True,
            do_xcom_push=False,
            **kwargs,
        )
        self.model_name = model_name
        self.version = version
        self.alias = alias
        self.repository = repository
        self.base_image = base_image
        self.context_bucket = context_bucket
        self.context_prefix = context_prefix.strip("/")
        self.aws_conn_id = aws_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.check_model = check_model  # as DockerBuildServingImageOperator's

    def configure(self, context_uri: str, destination: str, build_args: dict[str, str], labels: dict[str, str]) -> None:
        """Kaniko's arguments for one build: where the context is, what to build and push."""
        self.arguments = [
            f"--context={context_uri}",
            "--dockerfile=Dockerfile",
            f"--destination={destination}",
            *[f"--build-arg={key}={value}" for key, value in sorted(build_args.items())],
            *[f"--label={key}={value}" for key, value in sorted(labels.items())],
            # The pushed digest becomes the container's termination message: the task's result.
            "--digest-file=/dev/termination-log",
            "--snapshot-mode=redo",
            "--cleanup",
        ]

    def upload_context(self, folder: Path, key: str) -> str:
        """Pack the rendered context and put it in S3 (replacing an earlier try's upload)."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "context.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(folder, arcname=".")
            S3Hook(aws_conn_id=self.aws_conn_id).load_file(archive, key, bucket_name=self.context_bucket, replace=True)
        return f"s3://{self.context_bucket}/{key}"

    def execute(self, context: Any) -> dict[str, Any]:
        from asgard.hooks.mlflow import MlflowHook
        from asgard.registry.versions import resolve_model_version
        from asgard.serving import image as serving_image

        if self.check_model is not None:
            self.check_model(context, self.model_name)
        hook = MlflowHook(self.mlflow_conn_id)
        ref = resolve_model_version(hook, self.model_name, self.version or None, self.alias or None)
        tag = serving_image.image_tag(ref.name, ref.version)
        destination = f"{self.repository or get_settings().serving_repository}:{tag}"
        with tempfile.TemporaryDirectory(prefix="asgard-image-") as scratch:
            rendered = serving_image.render_context(hook, ref, Path(scratch) / "context")
            uri = self.upload_context(rendered.folder, f"{self.context_prefix}/{tag}-{ref.run_id}.tar.gz")
        self.configure(uri, destination, serving_image.build_arguments(rendered, self.base_image), rendered.labels)
        super().execute(context)
        result = serving_image.BuiltImage(
            destination,
            **ref.to_dict(),
            built=True,
            flavor=rendered.info["flavor"],
            context=uri,
            digest=_termination_message(self.remote_pod),
        ).to_dict()
        context["ti"].xcom_push(key="return_value", value=result)
        return result


def _termination_message(pod: Any) -> str | None:
    for status in (pod.status.container_statuses or []) if pod is not None and pod.status else []:
        terminated = status.state.terminated if status.state else None
        if terminated is not None and terminated.message:
            return terminated.message.strip()
    return None
