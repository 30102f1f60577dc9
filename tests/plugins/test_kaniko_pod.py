"""The Kaniko builder: its pod against the official Kubernetes schemas, its context upload to S3.

No Kubernetes API server can run here: the pod is rendered by the provider's own
``build_pod_request_obj`` and validated with ``kubernetes-validate --strict``; the context goes to
S3 through the amazon provider's S3Hook (moto stands in for S3).
"""

from __future__ import annotations

import io
import json
import tarfile

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from asgard.operators.kaniko import KanikoBuildServingImageOperator, _termination_message

KUBERNETES_VERSION = "1.33.0"
BUILD_ARGS = {"BASE_IMAGE": "python:3.11-slim"}
LABELS = {"io.asgard.model.name": "churn", "io.asgard.model.version": "4"}


def render(**changes):
    operator = KanikoBuildServingImageOperator(
        task_id="build_image", model_name="churn", context_bucket="builds", **changes
    )
    operator.configure(
        "s3://builds/ctx.tar.gz", "1234.dkr.ecr.eu-west-1.amazonaws.com/models:churn-v4", BUILD_ARGS, LABELS
    )
    return ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))


@pytest.mark.parametrize("changes", [{}, {"registry_secret": "registry-login", "aws_region": "eu-west-1"}])
def test_pod_is_valid_against_the_kubernetes_schemas(changes):
    pod = render(**changes)
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith("gcr.io/kaniko-project/executor:")
    args = container["args"]
    assert "--context=s3://builds/ctx.tar.gz" in args and "--dockerfile=Dockerfile" in args
    assert "--destination=1234.dkr.ecr.eu-west-1.amazonaws.com/models:churn-v4" in args
    assert "--build-arg=BASE_IMAGE=python:3.11-slim" in args and "--label=io.asgard.model.version=4" in args
    assert "--digest-file=/dev/termination-log" in args
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["serviceAccountName"] == "asgard-image-builder" and pod["spec"]["restartPolicy"] == "Never"
    assert container["resources"]["limits"]["memory"] == "4Gi"


def test_registry_secret_becomes_kanikos_docker_config():
    pod = render(registry_secret="registry-login")
    (volume,) = pod["spec"]["volumes"]
    assert volume["secret"] == {
        "secretName": "registry-login",
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount == {"name": "docker-config", "mountPath": "/kaniko/.docker", "readOnly": True}
    assert "volumes" not in render()["spec"] or not render()["spec"]["volumes"]


def test_context_is_uploaded_to_s3_as_a_tarball(tmp_path, monkeypatch):
    from moto import mock_aws

    context = tmp_path / "context"
    (context / "model").mkdir(parents=True)
    (context / "Dockerfile").write_text("FROM scratch\n")
    (context / "model" / "serving.json").write_text(json.dumps({"model_name": "churn"}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": "us-east-1"}})
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="builds")
        operator = KanikoBuildServingImageOperator(task_id="build_image", model_name="churn", context_bucket="builds")
        uri = operator.upload_context(context, "asgard/build-contexts/churn-v4-abc.tar.gz")
        uri_again = operator.upload_context(context, "asgard/build-contexts/churn-v4-abc.tar.gz")  # a retry replaces
        body = s3.get_object(Bucket="builds", Key="asgard/build-contexts/churn-v4-abc.tar.gz")["Body"].read()
    assert uri == uri_again == "s3://builds/asgard/build-contexts/churn-v4-abc.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        names = set(archive.getnames())
    assert {"./Dockerfile", "./model/serving.json"} <= names


def test_digest_comes_from_the_termination_message():
    digest = "sha256:" + "ab" * 32
    pod = k8s.V1Pod(
        status=k8s.V1PodStatus(
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="kaniko",
                    image_id="",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(
                        terminated=k8s.V1ContainerStateTerminated(exit_code=0, message=digest + "\n")
                    ),
                )
            ]
        )
    )
    assert _termination_message(pod) == digest
    assert _termination_message(None) is None


def test_deploy_model_builds_with_kaniko_when_the_settings_say_so(monkeypatch):
    """ASGARD_IMAGE_BUILDER=kaniko: deploy_model's build_image is the Kaniko pod (configured from the
    settings, valid against the schemas) and push_image pins what it pushed; the deploy is unchanged."""
    from airflow.dag_processing.dagbag import DagBag

    from asgard.core.settings import REPO_ROOT
    from asgard.operators.serving_image import KanikoPushedImageOperator

    monkeypatch.setenv("ASGARD_IMAGE_BUILDER", "kaniko")
    monkeypatch.setenv("ASGARD_S3_BUCKET", "platform-builds")
    monkeypatch.setenv("ASGARD_KANIKO_NAMESPACE", "builds")
    monkeypatch.setenv("ASGARD_KANIKO_REGISTRY_SECRET", "registry-login")
    dag = DagBag(str(REPO_ROOT / "dags" / "deploy_model.py")).dags["deploy_model"]
    build, push = dag.get_task("build_image"), dag.get_task("push_image")
    assert isinstance(build, KanikoBuildServingImageOperator) and isinstance(push, KanikoPushedImageOperator)
    assert (build.context_bucket, build.namespace) == ("platform-builds", "builds")
    assert push.upstream_task_ids == {"build_image"}
    assert dag.get_task("deploy_image").upstream_task_ids == {"resolve_request", "build_image", "push_image"}
    build.configure("s3://platform-builds/ctx.tar.gz", "registry.example:5000/asgard/models:churn-v4", {}, {})
    pod = ApiClient().sanitize_for_serialization(build.build_pod_request_obj(dry_run=True))
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    assert (
        pod["metadata"]["namespace"] == "builds"
        and pod["spec"]["volumes"][0]["secret"]["secretName"] == "registry-login"
    )


def test_what_kaniko_pushed_is_deployed_by_its_digest():
    from asgard.operators.serving_image import pushed_by_builder
    from asgard.serving.image import BuiltImage

    fields = {"model_name": "churn", "version": "4", "run_id": "r", "source": "s", "built": True, "flavor": "onnx"}
    digest = "sha256:" + "a" * 64
    built = BuiltImage("registry.example:5000/asgard/models:churn-v4", **fields, digest=digest)
    pushed = pushed_by_builder(built)
    assert pushed.reference == f"registry.example:5000/asgard/models@{digest}" and pushed.digest == digest
    with pytest.raises(RuntimeError, match="reported no digest"):
        pushed_by_builder(BuiltImage("registry.example:5000/asgard/models:churn-v4", **fields, digest=None))
