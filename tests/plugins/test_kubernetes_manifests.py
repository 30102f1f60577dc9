"""The serving manifests against the official Kubernetes schemas (strict), and what they promise."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from asgard.core.errors import InputError
from asgard.deploy.kubernetes_manifests import (
    app_name,
    canary_deployment,
    canary_replicas,
    mirror_config_map,
    render,
    shadow_workload,
)

# The Kubernetes versions the manifests are checked against (EKS's standard-support window).
SUPPORTED = ["1.33.0", "1.34.0", "1.35.0"]
IMAGE = "1234.dkr.ecr.eu-west-1.amazonaws.com/asgard/models@sha256:" + "ab" * 32
CURRENT_API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}


@pytest.fixture
def objects():
    return render(
        model_name="churn_predictor",
        version="7",
        run_id="0123abcd",
        image=IMAGE,
        namespace="asgard",
        replicas=2,
        resources={"limits": {"memory": "2Gi"}},
        prediction_log="s3://predictions/churn",
        online_store_secret="asgard-online-store",
    )


@pytest.mark.parametrize("kubernetes_version", SUPPORTED)
def test_every_object_is_valid_and_current(objects, kubernetes_version):
    assert {o["kind"]: o["apiVersion"] for o in objects} == CURRENT_API_VERSIONS
    for manifest in objects:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)


@pytest.mark.parametrize("kubernetes_version", SUPPORTED)
def test_a_canary_is_a_valid_deployment_whose_pods_the_service_selects_and_the_stable_one_does_not(
    objects, kubernetes_version
):
    deployment, service = objects[0], objects[1]
    canary = canary_deployment(deployment, canary_replicas(2, 10))
    kubernetes_validate.validate(canary, kubernetes_version, strict=True)
    assert canary["metadata"]["name"] == "churn-predictor-inference-canary" and canary["spec"]["replicas"] == 1
    pod_labels = canary["spec"]["template"]["metadata"]["labels"]
    # The Service sends it traffic; its own selector matches its pods only, not the stable ones.
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert canary["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    stable_pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert not canary["spec"]["selector"]["matchLabels"].items() <= stable_pod_labels.items()
    # Everything else is the stable pod's spec: locked down, probed, pinned by digest.
    assert canary["spec"]["template"]["spec"] == deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["name"] == "churn-predictor-inference"  # the stable body is not changed


@pytest.mark.parametrize("kubernetes_version", SUPPORTED)
def test_a_shadow_has_its_own_service_the_models_service_does_not_reach_and_mirrors_nothing(
    objects, kubernetes_version
):
    deployment, service = objects[0], objects[1]
    shadow, front = shadow_workload(deployment, service, 1)
    mirror = mirror_config_map(deployment, 15)
    for manifest in (shadow, front, mirror):
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    pod = shadow["spec"]["template"]
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert front["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert front["metadata"]["name"] == shadow["metadata"]["name"] == "churn-predictor-inference-shadow"
    # The serving pods read the mirror from an optional ConfigMap; the shadow's own pods do not.
    stable_pod = deployment["spec"]["template"]["spec"]
    mirror_volume = {"name": "mirror", "configMap": {"name": "churn-predictor-inference-mirror", "optional": True}}
    assert mirror_volume in stable_pod["volumes"]
    assert "ASGARD_MIRROR_CONFIG" in {variable["name"] for variable in stable_pod["containers"][0]["env"]}
    assert "mirror" not in {volume["name"] for volume in pod["spec"]["volumes"]}
    assert "ASGARD_MIRROR_CONFIG" not in {variable["name"] for variable in pod["spec"]["containers"][0]["env"]}
    assert json.loads(mirror["data"]["mirror.json"]) == {
        "url": "http://churn-predictor-inference-shadow.asgard.svc.cluster.local",
        "percent": 15,
    }


@pytest.mark.parametrize(
    ("stable", "percent", "replicas"), [(2, 10, 1), (2, 30, 1), (4, 20, 1), (10, 20, 2), (6, 50, 6)]
)
def test_canary_replicas_approximate_the_share_with_at_least_one_pod(stable, percent, replicas):
    assert canary_replicas(stable, percent) == replicas


def test_deployment_is_locked_down_probed_bounded_and_pinned(objects):
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 2 and container["image"] == IMAGE
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "ASGARD_PREDICTION_LOG", "value": "s3://predictions/churn"} in container["env"]


def test_the_online_store_url_reaches_the_pod_from_a_secret_only(objects):
    """Entity-id requests read the online store whose URL (a password in it) is in a Secret: the
    manifest names the Secret, never the URL; without the Secret the pod still starts (entity
    requests then answer 503, saying why)."""
    container = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    online = next(variable for variable in container["env"] if variable["name"] == "ASGARD_ONLINE_STORE")
    assert online == {
        "name": "ASGARD_ONLINE_STORE",
        "valueFrom": {"secretKeyRef": {"name": "asgard-online-store", "key": "url", "optional": True}},
    }
    assert "redis://" not in json.dumps(objects)


def test_lineage_on_every_object_and_service_maps_80_to_8080(objects):
    for manifest in objects:
        assert manifest["metadata"]["name"] == "churn-predictor-inference"
        assert manifest["metadata"]["labels"]["asgard.io/model-version"] == "7"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["asgard.io/mlflow-run-id"] == "0123abcd"
    assert annotations["asgard.io/image-digest"] == "sha256:" + "ab" * 32
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 6


def test_a_tag_is_refused_and_names_are_dns_safe():
    with pytest.raises(InputError, match="not pinned by digest"):
        render(model_name="m", version="1", run_id="r", image="registry/asgard/models:m-v1")
    assert app_name("Churn_Predictor.v2") == "churn-predictor-v2-inference"


@pytest.mark.parametrize(
    ("resources", "named"),
    [
        ({"limits": {"memory": "1Gi\n---\nkind: Deployment\nspec: {privileged: true}"}}, "resources.limits.memory"),
        ({"limits": {"memory": '1Gi"\n      privileged: "true'}}, "resources.limits.memory"),
        ({"limits": {"gpu": "1"}}, "cpu and memory only"),
        ({"requests": {"cpu": 2}}, "resources.requests.cpu"),
        ({"hostNetwork": True}, "not hostNetwork"),
    ],
    ids=["new-document", "quote-escape", "unknown-resource", "not-a-string", "unknown-key"],
)
def test_a_resources_value_cannot_reach_the_manifest_as_anything_but_a_quantity(resources, named):
    with pytest.raises(InputError, match=named):
        render(model_name="m", version="1", run_id="r", image=IMAGE, resources=resources)


def test_values_are_rendered_as_data_and_only_the_models_objects_come_out(monkeypatch):
    """Even a value no schema stopped (the prediction log URI is configuration, not a request) stays one
    scalar: the rendered documents are exactly the model's five objects."""
    prefix = "s3://logs/x\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: evil}"
    objects = render(model_name="m", version="1", run_id="r", image=IMAGE, prediction_log=prefix)
    assert [o["kind"] for o in objects] == [
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"
    ]  # fmt: skip
    (container,) = objects[0]["spec"]["template"]["spec"]["containers"]
    assert {"name": "ASGARD_PREDICTION_LOG", "value": prefix} in container["env"]


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels, matchExpressions with In) as the API server reads it."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(labels.get(rule["key"]) in rule["values"] for rule in selector.get("matchExpressions", []))


@pytest.mark.parametrize("kubernetes_version", SUPPORTED)
def test_the_models_pods_reach_cluster_dns_the_shadow_and_the_named_egress_only(kubernetes_version):
    """Issue 50: a model is code from a user; its pods, whatever their track, are fenced: requests in on
    their port, out only to cluster DNS, the shadow's pods (the mirror) and what the platform names."""
    objects = render(
        model_name="churn_predictor", version="7", run_id="r", image=IMAGE, egress=(("10.0.12.0/24", 6379),)
    )
    policy = objects[-1]
    kubernetes_validate.validate(policy, kubernetes_version, strict=True)
    deployment, service = objects[0], objects[1]
    shadow, _ = shadow_workload(deployment, service, 1)
    canary = canary_deployment(deployment, 1)
    selector = policy["spec"]["podSelector"]
    for workload in (deployment, canary, shadow):
        assert selects(selector, workload["spec"]["template"]["metadata"]["labels"]), workload["metadata"]["name"]
    other = render(model_name="other_model", version="1", run_id="r", image=IMAGE)[0]
    assert not selects(selector, other["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    dns, mirror, store = policy["spec"]["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {port["port"] for port in dns["ports"]} == {53}
    assert selects(mirror["to"][0]["podSelector"], shadow["spec"]["template"]["metadata"]["labels"])
    assert not selects(mirror["to"][0]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert store == {"to": [{"ipBlock": {"cidr": "10.0.12.0/24"}}], "ports": [{"port": 6379, "protocol": "TCP"}]}
    # No egress named: DNS and the mirror only.
    assert len(render(model_name="m", version="1", run_id="r", image=IMAGE)[-1]["spec"]["egress"]) == 2


@pytest.mark.parametrize("text", ["10.0.0.0/8", "10.0.0.1/8:6379", "redis.internal:6379", "10.0.0.0/8:0", "x"])
def test_a_bad_egress_setting_is_refused_naming_the_entry(text):
    from pydantic import ValidationError

    from asgard.core.settings import Settings

    with pytest.raises(ValidationError, match="ASGARD_KUBERNETES_SERVING_EGRESS"):
        Settings(kubernetes_serving_egress=text)
