"""train_script's production runner: the uploaded script as a locked-down Kubernetes pod.

The pod's one way out is the same MLflow door the local sandbox has (``asgard.hooks.mlflow_gateway``,
scoped to the run), served by the task on the worker's address; the pod's ``MLFLOW_TRACKING_URI`` is
that door, and a NetworkPolicy of the run's own lets the pod reach that address and port and nothing
else (no ingress at all), so the real tracking server, the platform's services and the cluster's
other pods are out of its reach.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from asgard.core.settings import Settings, get_settings
from asgard.features.store import FEATURE_REPO, STORE_YAML
from asgard.training.scripts import runner
from asgard.training.scripts import secrets as script_secrets

WORKDIR = "/work"
SCRIPT_MOUNT = "/script"
# The script (gzipped) and feature_store.yaml arrive in a ConfigMap mounted read-only, and are
# written to the only writable folders. Not environment variables: Linux refuses to start a process
# with any one variable over 128 KiB, and a pod spec has a size limit too.
RUN_COMMAND = (
    'mkdir -p "$FEAST_REPO_PATH" && '
    f'cp {SCRIPT_MOUNT}/feature_store.yaml "$FEAST_REPO_PATH/feature_store.yaml" && '
    f'gzip -dc {SCRIPT_MOUNT}/script.py.gz > "$WORKDIR/$SCRIPT_NAME" && '
    'exec python -u "$WORKDIR/$SCRIPT_NAME"'
)
NON_ROOT_UID = 10001
# The label that ties a run's pod to its NetworkPolicy.
RUN_LABEL = "asgard.io/script-run"


class UserScriptPodOperator(KubernetesPodOperator):
    """Runs an uploaded training script as a pod: non-root, read-only root filesystem, no service
    account token, no privilege escalation, all capabilities dropped, the run's memory and time limits.

    The image is the one built for the run's requirements (``<repository>:<environment key>``, the
    same key as the local runner's virtualenv cache). The pod sees exactly what a local run would:
    the injected variables and the user's ``env_vars``.
    """

    def __init__(self, *, settings: Settings | None = None, image: str | None = None, **kwargs: Any) -> None:
        self.settings = settings or get_settings()
        super().__init__(
            namespace=self.settings.training_namespace,
            name="train-script",
            # Usually templated from prepare_environment: the pushed image, by digest.
            image=image or "",
            cmds=["sh", "-c"],
            arguments=[RUN_COMMAND],
            labels={"app.kubernetes.io/part-of": "asgard", "app.kubernetes.io/component": "train-script"},
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=NON_ROOT_UID,
                run_as_group=NON_ROOT_UID,
                fs_group=NON_ROOT_UID,
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
            container_security_context=k8s.V1SecurityContext(
                allow_privilege_escalation=False,
                read_only_root_filesystem=True,
                privileged=False,
                capabilities=k8s.V1Capabilities(drop=["ALL"]),
            ),
            volumes=[
                k8s.V1Volume(name="work", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="2Gi")),
                k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="1Gi")),
            ],
            volume_mounts=[
                k8s.V1VolumeMount(name="work", mount_path=WORKDIR),
                k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
                k8s.V1VolumeMount(name="script", mount_path=SCRIPT_MOUNT, read_only=True),
            ],
            automount_service_account_token=False,
            on_finish_action="delete_pod",
            get_logs=True,
            do_xcom_push=False,
            **kwargs,
        )

    def configure(
        self,
        params: dict[str, Any],
        injected: dict[str, str],
        door: tuple[str, int] | None = None,
        secret_values: dict[str, str] | None = None,
    ) -> None:
        """Set the image, environment and limits of this run's pod from its conf; ``door`` (the MLflow
        door's address and port, which ``injected``'s tracking URI names) is all its NetworkPolicy lets
        it reach. ``secret_values`` (the run's ``secret_env_vars``, resolved) go into a Secret of the run's
        own that the pod's environment refers to: never into the pod's spec, which anyone who may list
        pods reads."""
        if not self.image:  # not given: the image of the requirements set, by its tag
            key = runner.environment_key(list(params.get("requirements") or []))
            self.image = f"{self.settings.script_repository}:{key}"
        store_yaml = (FEATURE_REPO / STORE_YAML[self.settings.profile]).read_bytes()  # placeholders unexpanded
        script = base64.b64decode(params["script_content"])
        digest = hashlib.sha256(script).hexdigest()
        # One ConfigMap per MLflow run (a retry reuses both), removed when the pod has run.
        self.script_config_map = k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(
                name=f"train-script-{injected['MLFLOW_RUN_ID'].lower()}"[:63],
                namespace=self.namespace,
                labels=dict(self.labels),
                annotations={"asgard.io/script-sha256": digest},
            ),
            binary_data={
                "script.py.gz": _b64(gzip.compress(script, mtime=0)),
                "feature_store.yaml": _b64(store_yaml),
            },
            immutable=True,
        )
        self.volumes = [
            *[volume for volume in self.volumes if volume.name != "script"],
            k8s.V1Volume(
                name="script",
                config_map=k8s.V1ConfigMapVolumeSource(name=self.script_config_map.metadata.name),
            ),
        ]
        variables = {
            **runner.check_env_vars(params.get("env_vars") or {}),
            **injected,
            "FEAST_REPO_PATH": f"{WORKDIR}/feature_repo",
            "WORKDIR": WORKDIR,
            "HOME": WORKDIR,
            "PYTHONUNBUFFERED": "1",
            "SCRIPT_NAME": params["script_name"],
        }
        self.env_vars = [k8s.V1EnvVar(name=name, value=value) for name, value in sorted(variables.items())]
        self.script_secret = None
        if secret_values:
            self.script_secret = k8s.V1Secret(
                api_version="v1",
                kind="Secret",
                metadata=k8s.V1ObjectMeta(
                    name=f"train-script-secrets-{injected['MLFLOW_RUN_ID'].lower()}"[:63],
                    namespace=self.namespace,
                    labels=dict(self.labels),
                ),
                type="Opaque",
                string_data=dict(secret_values),
                immutable=True,
            )
            self.env_vars += [
                k8s.V1EnvVar(
                    name=name,
                    value_from=k8s.V1EnvVarSource(
                        secret_key_ref=k8s.V1SecretKeySelector(name=self.script_secret.metadata.name, key=name)
                    ),
                )
                for name in sorted(secret_values)
            ]
        memory = f"{int(params.get('memory_mb', 4096))}Mi"
        self.container_resources = k8s.V1ResourceRequirements(
            requests={"cpu": "500m", "memory": memory},
            limits={"cpu": "2", "memory": memory, "ephemeral-storage": "4Gi"},
        )
        self.active_deadline_seconds = int(params.get("timeout", 600))
        self.annotations = {"asgard.io/script-sha256": digest}
        run_label = injected["MLFLOW_RUN_ID"].lower()[:63]
        self.labels = {**self.labels, RUN_LABEL: run_label}
        self.network_policy = network_policy(self.script_config_map.metadata.name, self.namespace, run_label, door)

    def publish_script(self) -> None:
        """Create the run's NetworkPolicy and script ConfigMap; a retry finds an earlier try's and replaces
        them with this try's, patched in place (its door has a new address and port: the old policy would
        let the pod out to whatever listens there now; a delete and create would leave a moment unfenced)."""
        from kubernetes.client import NetworkingV1Api
        from kubernetes.client.exceptions import ApiException

        networking = NetworkingV1Api(self.hook.api_client)
        core = self.hook.core_v1_client
        created = [
            (
                networking.create_namespaced_network_policy,
                networking.patch_namespaced_network_policy,
                self.network_policy,
            ),
            (core.create_namespaced_config_map, core.patch_namespaced_config_map, self.script_config_map),
        ]
        if getattr(self, "script_secret", None) is not None:
            created.append((core.create_namespaced_secret, core.patch_namespaced_secret, self.script_secret))
        for create, replace, body in created:
            try:
                create(self.namespace, body)
            except ApiException as error:
                if error.status != 409:
                    raise
                replace(body.metadata.name, self.namespace, body)

    def remove_script(self) -> None:
        from kubernetes.client import NetworkingV1Api
        from kubernetes.client.exceptions import ApiException

        networking = NetworkingV1Api(self.hook.api_client)
        removed = [
            (self.hook.core_v1_client.delete_namespaced_config_map, self.script_config_map.metadata.name),
            (networking.delete_namespaced_network_policy, self.script_config_map.metadata.name),
        ]
        if getattr(self, "script_secret", None) is not None:
            removed.append((self.hook.core_v1_client.delete_namespaced_secret, self.script_secret.metadata.name))
        for delete, name in removed:
            try:
                delete(name, self.namespace)
            except ApiException as error:
                if error.status != 404:
                    raise

    def execute(self, context: Any) -> dict[str, str]:
        from asgard.hooks.mlflow import MlflowHook
        from asgard.hooks.mlflow_gateway import RunScope, serving_on_tcp

        params, dag_run = context["params"], context["dag_run"]
        hook = MlflowHook()
        run = hook.get_or_create_run(
            experiment_name=params["experiment_name"],
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            tags=params.get("tags") or {},
        )
        repo = f"{WORKDIR}/feature_repo"
        scope = RunScope(
            run.info.run_id,
            run.info.experiment_id,
            params["experiment_name"],
            max_artifact_bytes=self.settings.script_max_disk_mb * 1024 * 1024,
        )
        host = door_address(self.settings)
        with serving_on_tcp(hook.tracking_uri, scope, host) as port:
            injected = runner.injected_variables(params, f"http://{host}:{port}", run.info.run_id, repo)
            from asgard.training.scripts.pipeline import acting_team

            upload = context["ti"].xcom_pull(task_ids="check_upload") or {}
            secret_values = script_secrets.resolve(params.get("secret_env_vars") or {}, acting_team(params, upload))
            self.configure(params, injected, door=(host, port), secret_values=secret_values)
            self.publish_script()
            try:
                super().execute(context)
            finally:
                self.remove_script()
        # The pod operator's own XCom is the sidecar's; the run id is what train_script passes on.
        result = {"mlflow_run_id": run.info.run_id}
        context["ti"].xcom_push(key="return_value", value=result)
        return result


def door_address(settings: Settings) -> str:
    """The IP address script pods reach this worker's MLflow door at (``ASGARD_SCRIPT_DOOR_HOST``, else
    this host's own address), as an IP: the NetworkPolicy names it as a /32."""
    import socket

    return socket.gethostbyname(settings.script_door_host or socket.gethostname())


def network_policy(name: str, namespace: str, run_label: str, door: tuple[str, int] | None) -> k8s.V1NetworkPolicy:
    """The run's pod may reach the door (``door``: address, port) and nothing else, and takes no connection."""
    egress = []
    if door is not None:
        host, port = door
        egress.append(
            k8s.V1NetworkPolicyEgressRule(
                to=[k8s.V1NetworkPolicyPeer(ip_block=k8s.V1IPBlock(cidr=f"{host}/32"))],
                ports=[k8s.V1NetworkPolicyPort(protocol="TCP", port=port)],
            )
        )
    return k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "asgard"}),
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels={RUN_LABEL: run_label}),
            policy_types=["Ingress", "Egress"],
            ingress=[],
            egress=egress,
        ),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
