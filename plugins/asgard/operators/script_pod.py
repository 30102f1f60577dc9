"""train_script's production runner: the uploaded script as a locked-down Kubernetes pod."""

from __future__ import annotations

import hashlib
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from asgard import user_scripts
from asgard.features import FEATURE_REPO, STORE_YAML
from asgard.settings import Settings, get_settings

WORKDIR = "/work"
# The script arrives base64 in the pod's environment and is written to the only writable folders.
RUN_COMMAND = (
    'mkdir -p "$FEAST_REPO_PATH" && '
    'printf %s "$FEATURE_STORE_YAML_B64" | base64 -d > "$FEAST_REPO_PATH/feature_store.yaml" && '
    'printf %s "$SCRIPT_B64" | base64 -d > "$WORKDIR/$SCRIPT_NAME" && '
    'exec python -u "$WORKDIR/$SCRIPT_NAME"'
)
NON_ROOT_UID = 10001


class UserScriptPodOperator(KubernetesPodOperator):
    """Runs an uploaded training script as a pod: non-root, read-only root filesystem, no service
    account token, no privilege escalation, all capabilities dropped, the run's memory and time limits.

    The image is the one built for the run's requirements (``<repository>:<environment key>``, the
    same key as the local runner's virtualenv cache). The pod sees exactly what a local run would:
    the injected variables and the user's ``env_vars``.
    """

    def __init__(self, *, settings: Settings | None = None, **kwargs: Any) -> None:
        self.settings = settings or get_settings()
        super().__init__(
            namespace=self.settings.training_namespace,
            name="train-script",
            image=f"{self.settings.script_image_repository}:unset",
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
            ],
            automount_service_account_token=False,
            on_finish_action="delete_pod",
            get_logs=True,
            do_xcom_push=False,
            **kwargs,
        )

    def configure(self, params: dict[str, Any], injected: dict[str, str]) -> None:
        """Set the image, environment and limits of this run's pod from its conf."""
        requirements = list(params.get("requirements") or [])
        key = user_scripts.environment_key(requirements)
        self.image = f"{self.settings.script_image_repository}:{key}"
        store_yaml = (FEATURE_REPO / STORE_YAML[self.settings.profile]).read_bytes()  # placeholders unexpanded
        variables = {
            **user_scripts.check_env_vars(params.get("env_vars") or {}),
            **injected,
            "FEAST_REPO_PATH": f"{WORKDIR}/feature_repo",
            "WORKDIR": WORKDIR,
            "HOME": WORKDIR,
            "PYTHONUNBUFFERED": "1",
            "SCRIPT_NAME": params["script_name"],
            "SCRIPT_B64": params["script_content"],
            "FEATURE_STORE_YAML_B64": _b64(store_yaml),
        }
        self.env_vars = [k8s.V1EnvVar(name=name, value=value) for name, value in sorted(variables.items())]
        memory = f"{int(params.get('memory_mb', 4096))}Mi"
        self.container_resources = k8s.V1ResourceRequirements(
            requests={"cpu": "500m", "memory": memory},
            limits={"cpu": "2", "memory": memory, "ephemeral-storage": "4Gi"},
        )
        self.active_deadline_seconds = int(params.get("timeout", 600))
        self.annotations = {"asgard.io/script-sha256": hashlib.sha256(params["script_content"].encode()).hexdigest()}

    def execute(self, context: Any) -> dict[str, str]:
        from asgard.hooks.mlflow import MlflowHook

        params, dag_run = context["params"], context["dag_run"]
        hook = MlflowHook()
        run = hook.get_or_create_run(
            experiment_name=params["experiment_name"],
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            tags=params.get("tags") or {},
        )
        repo = f"{WORKDIR}/feature_repo"
        self.configure(params, user_scripts.injected_variables(params, hook.tracking_uri, run.info.run_id, repo))
        super().execute(context)
        # The pod operator's own XCom is the sidecar's; the run id is what train_script passes on.
        result = {"mlflow_run_id": run.info.run_id}
        context["ti"].xcom_push(key="return_value", value=result)
        return result


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()
