"""deploy_model on the kubernetes target through the real embedded stack (Airflow standalone, MLflow),
its cluster kmock's Kubernetes API emulator behind the stack's ``kubernetes_default`` connection.

A namespace outside the model's team's (``ASGARD_KUBERNETES_NAMESPACES``) fails the run in its first
task, at once, naming the namespace, the team and the namespaces it may use: nothing is approved or
built, and the cluster is never asked anything. In the team's namespace, a Service of the model's
workload name that Asgard did not create fails the deploy naming it, and nothing is applied over it.
"""

from __future__ import annotations

import json
import uuid

import httpx
import kmock
import pytest

from asgard.core.kubernetes_namespaces import team_namespaces
from asgard.deploy.kubernetes_manifests import app_name
from conftest import emulated_cluster
from sample_data.models import register_sample_model

pytestmark = pytest.mark.integration

CONNECTION = "kubernetes_default"
SERVICES = kmock.resource("", "v1", "services")


@pytest.fixture
def cluster(embedded_stack):
    """The emulator as the stack's Kubernetes connection (the one the kubernetes target uses); the
    connection as it was afterwards."""
    url, headers = embedded_stack.settings.airflow_url, {"Authorization": f"Bearer {embedded_stack.api.token}"}
    with emulated_cluster(kmock.KubernetesEmulator()) as (emulator, kubeconfig):
        body = {
            "connection_id": CONNECTION,
            "conn_type": "kubernetes",
            "extra": json.dumps({"kube_config": kubeconfig}),
        }
        existing = httpx.get(f"{url}/api/v2/connections/{CONNECTION}", headers=headers, timeout=60)
        if existing.status_code == 200:
            answer = httpx.patch(f"{url}/api/v2/connections/{CONNECTION}", json=body, headers=headers, timeout=60)
        else:
            answer = httpx.post(f"{url}/api/v2/connections", json=body, headers=headers, timeout=60)
        assert answer.status_code in (200, 201), answer.text
        try:
            yield emulator
        finally:
            if existing.status_code == 200:
                httpx.patch(f"{url}/api/v2/connections/{CONNECTION}", json=existing.json(), headers=headers, timeout=60)
            else:
                httpx.delete(f"{url}/api/v2/connections/{CONNECTION}", headers=headers, timeout=60)


def test_a_namespace_outside_the_models_team_fails_the_run_at_once_naming_it(embedded_stack, cluster):
    stack, api = embedded_stack, embedded_stack.api
    name = f"k8s_namespace_{uuid.uuid4().hex[:6]}"
    version = register_sample_model(stack.settings.mlflow_url, name, customers=500)
    # A model registered outside any team's job is the default team's; its namespaces as the stack has them.
    allowed = team_namespaces(stack.settings)[stack.settings.default_team]
    foreign = "ml-another-team"
    assert foreign not in allowed

    conf = {"model_name": name, "version": version, "target": "kubernetes", "namespace": foreign}
    outcome = api.run_and_wait("deploy_model", conf, timeout=600)

    assert outcome.state == "failed", outcome
    refused = (
        f"namespace '{foreign}' is not one the deploy may use: model '{name}' belongs to team "
        f"'{stack.settings.default_team}', which may deploy to {', '.join(allowed)} only (ASGARD_KUBERNETES_NAMESPACES)"
    )
    error = api.run_error("deploy_model", outcome.run_id)
    assert error["task"] == "resolve_request" and refused in error["message"], error
    # At once: one try (a request that cannot succeed is not retried), and nothing after it ran.
    first = api.task_instances.get_task_instance("deploy_model", outcome.run_id, "resolve_request")
    assert first.try_number == 1 and outcome.task_states["resolve_request"] == "failed"
    later = {task: state for task, state in outcome.task_states.items() if task != "resolve_request"}
    # The hand-on of other promotions stands apart: a run by hand carries none, so it skips.
    assert later.pop("hand_on_other_promotions") == "skipped" and set(later.values()) == {"upstream_failed"}, later
    assert not list(cluster)  # the cluster was never asked anything


def test_a_service_asgard_did_not_create_is_never_taken_over_by_a_deploy(embedded_stack, cluster):
    stack, api = embedded_stack, embedded_stack.api
    name = f"k8s_foreign_{uuid.uuid4().hex[:6]}"
    version = register_sample_model(stack.settings.mlflow_url, name, customers=500)
    namespace, app = team_namespaces(stack.settings)[stack.settings.default_team][0], app_name(name)
    theirs = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "namespace": namespace, "labels": {"team": "payments"}},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 80}]},
    }
    cluster.objects[SERVICES, namespace, app] = theirs

    conf = {"model_name": name, "version": version, "target": "kubernetes"}
    outcome = api.run_and_wait("deploy_model", conf, timeout=1500)

    assert outcome.state == "failed", outcome
    error = api.run_error("deploy_model", outcome.run_id)
    refused = f"Service {namespace}/{app} does not belong to model '{name}': Asgard did not create it"
    assert error["task"] == "deploy_image" and refused in error["message"], error
    # The image was built and pushed; the cluster was read, nothing written to it.
    assert outcome.task_states["approve_deployment"] == "success"
    assert not [request for request in cluster if request.method not in ("GET", "HEAD")]
    assert cluster.objects[SERVICES, namespace, app].raw["metadata"]["labels"] == {"team": "payments"}
