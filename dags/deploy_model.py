"""
### Deploy a model

Builds the serving image of a registered model version (tag `<model_name>-v<version>`, the model
baked in, ONNX when proven faithful on the holdout sample, else the native model) on the Docker
engine (or in a Kaniko pod: `ASGARD_IMAGE_BUILDER=kaniko`), pushes it to the registry (ECR in
production, the local OCI registry in the embedded default) and deploys that digest: on the `docker`
target beside the version serving, verified (health, `/metadata` version, `/predict` on holdout
rows) before the stable endpoint `/models/<model_name>/…` switches to it; on the `kubernetes` target
(EKS in production) its objects are server-side applied, the rollout watched, the same checks run
through the Service, and a failure re-applies what served before. A failed version never keeps
serving, and the alias the run deployed moves back.
`strategy` may also be `canary` (the new version answers `percent` of the live prediction requests
first; on kubernetes, as a second Deployment behind the Service) or `shadow` (it sees a copy of
them, sent by the router or, on kubernetes, by the serving pods; callers keep the serving answers):
within its limits it is promoted to all traffic, past one it is rolled back and the run fails naming
the limit; the figures are tagged `deploy.canary.*` / `deploy.shadow.*`.
`expose_features` (default false) lets the public `/predict` by entity id return stored features
(`return_features`) and name ids the online store does not hold; off, it does neither.
Runs when a promotion emits a model's Asset (the champion), or manually. Whether it deploys is the
model's deployment policy (`ASGARD_DEPLOY_POLICY`, default `approve`; a model's own through
`PUT /mlops/models/{name}/deploy-policy`): `auto` deploys; `approve` waits in `approve_deployment`
for a person of the model's team (the UI's "required actions", or Airflow's HITL REST API), showing
candidate vs serving version, the gate's evidence, what started it and the rollout plan — reject (or
no decision within `ASGARD_DEPLOY_APPROVAL_TIMEOUT`) skips the deploy and records why on the version;
`manual` deploys only runs triggered by hand. A hand trigger counts as its user's approval when that
user may decide (see `asgard.deploy.approval`).


```json
{"model_name": "churn_predictor", "alias": "champion", "target": "docker", "replicas": 2}
{"model_name": "churn_predictor", "version": "7", "strategy": "canary", "percent": 10, "min_requests": 200}
```
"""

from __future__ import annotations

from airflow.sdk import AssetAlias, dag, task

from asgard.core.dag_defaults import DEFAULT_ARGS, PLATFORM_TAG
from asgard.deploy.params import deploy_model_params
from asgard.deploy.rollout import recheck_image_model
from asgard.hooks.airflow_hitl import APPROVAL_TASK
from asgard.operators.deployment_approval import DeploymentApprovalOperator
from asgard.operators.serving_image import serving_image_tasks
from asgard.registry.models import CHAMPION_MODELS_ALIAS


@dag(
    # A promotion anywhere (train_model, train_script) deploys the new champion.
    schedule=[AssetAlias(CHAMPION_MODELS_ALIAS)],
    catchup=False,
    # Unpaused from the start: each promotion follows its model's policy (approve by default).
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    tags=[PLATFORM_TAG, "deployment"],
    doc_md=__doc__,
    params=deploy_model_params(),
)
def deploy_model():
    @task
    def resolve_request(params: dict, triggering_asset_events=None, dag_run=None) -> dict:
        from asgard.deploy.rollout import deployment_request
        from asgard.registry.ownership import run_access

        request = deployment_request(params, triggering_asset_events)
        run_access(dag_run, request.model_name)  # the run's user deploys only their teams' models
        return request.to_dict()

    # Promotions of other models that landed in this run too are handed on, each to a run of its own; a task
    # apart, so that whatever befalls this run's own model does not drop them.
    @task(outlets=[AssetAlias(CHAMPION_MODELS_ALIAS)])
    def hand_on_other_promotions(params: dict, triggering_asset_events=None, outlet_events=None) -> int:
        from asgard.deploy.rollout import hand_on_other_promotions

        return hand_on_other_promotions(params, triggering_asset_events, outlet_events)

    hand_on_other_promotions()

    request = resolve_request()
    # The policy, a hand trigger or a person decides; the version decided on is the one built.
    approval = DeploymentApprovalOperator(task_id=APPROVAL_TASK)
    # The Docker engine, or a Kaniko pod in the cluster (ASGARD_IMAGE_BUILDER): the same results.
    build, push = serving_image_tasks(
        model_name="{{ ti.xcom_pull(task_ids='resolve_request')['model_name'] }}",
        version="{{ ti.xcom_pull(task_ids='approve_deployment', key='version') or '' }}",
        alias="{{ ti.xcom_pull(task_ids='resolve_request')['alias'] }}",
        check_model=recheck_image_model,  # the hand-off names the conf's model, which the run's user may deploy
    )

    @task
    def deploy_image(
        request: dict, build: dict, push: dict, params=None, dag_run=None, triggering_asset_events=None
    ) -> dict:
        from asgard.deploy.approval import require_approval
        from asgard.deploy.rollout import deploy_to_target, deployment_request
        from asgard.hooks.mlflow import MlflowHook
        from asgard.registry.ownership import recheck
        from asgard.serving.image import BuiltImage, PushedImage

        # What to deploy where, from the run's conf (or Asset event) again, not from a hand-off that can change.
        asked = deployment_request(params, triggering_asset_events)
        built = BuiltImage.from_dict(build)
        recheck(dag_run, asked.model_name, request)
        recheck(dag_run, asked.model_name, {"model_name": built.model_name})  # the image is of that model too
        # The rollout the decision was given for, not one the model's policy names since.
        approved = require_approval(MlflowHook(), built.model_name, built.version, f"{dag_run.dag_id}/{dag_run.run_id}")
        return deploy_to_target(
            asked.as_approved(approved),
            built,
            PushedImage.from_dict(push),
            holder=f"{dag_run.dag_id}/{dag_run.run_id}",
        )

    request >> approval >> build >> push
    deploy_image(request, build.output, push.output)


deploy_model()
