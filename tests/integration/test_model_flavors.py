"""Models are served however MLflow logged them.

Versions logged with scikit-learn's three formats (skops, MLflow's default; cloudpickle; pickle) and
with the XGBoost and LightGBM flavors are registered in a real MLflow registry (SQLite), bundled by
the platform's bundler in its real sandbox (MLflow's own loader of each flavor, an environment of the
version's own requirements), and the bundle answers as the logged model does in the serving app's
predictor, as ONNX and as the native model. (An ordinary scikit-learn script uploaded with MLflow's
default ``log_model`` is made @champion and served in the new user's walk, ``test_new_user_walk.py``.)
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from asgard.serving import image as serving_image
from asgard_serving.model import Bundle, Predictor
from conftest import sqlite_mlflow_home
from sample_data.models import SEED_FEATURES, training_frame

pytestmark = pytest.mark.integration

EXPERIMENT = "flavors"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite MLflow registry as ``mlflow_default``, its artifacts under the test's folder, and data."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("flavors-home")
    with sqlite_mlflow_home(path) as tracking_uri:
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        client.create_experiment(EXPERIMENT, artifact_location=str(path / "artifacts"))
        features, target = training_frame(customers=800, features=SEED_FEATURES)
        yield tracking_uri, features, target


def _forest():
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=10, max_depth=5, random_state=3)


def _imputed_forest():
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(SimpleImputer(), _forest())


def _scaled_logistic():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=500))


def _log_sklearn(serialization_format: str | None, **extra):
    def log(mlflow, model, **common):
        if serialization_format is not None:  # None: MLflow's default (skops)
            extra["serialization_format"] = serialization_format
        return mlflow.sklearn.log_model(model, **common, **extra)

    return log


def _log_xgboost(mlflow, model, **common):
    return mlflow.xgboost.log_model(model, **common)


def _log_lightgbm(mlflow, model, **common):
    return mlflow.lightgbm.log_model(model, **common)


def _xgboost():
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=20, max_depth=3)


def _lightgbm():
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=20, verbose=-1)


# name: (model, how it is logged, its requirements' framework, logged holdout sample -> ONNX is tried)
CASES = {
    # The types a skops file may hold beyond skops's defaults are the logger's to name (SimpleImputer
    # keeps a numpy dtype, a forest its trees); MLflow records them, and its loader trusts only those.
    "skops_pipeline": (_scaled_logistic, _log_sklearn(None, skops_trusted_types=["numpy.dtype"]), "sklearn", True),
    "skops_forest_native": (
        _forest,
        _log_sklearn(None, skops_trusted_types=["sklearn.tree._tree.Tree"]),
        "sklearn",
        False,
    ),
    "cloudpickle_native": (_scaled_logistic, _log_sklearn("cloudpickle"), "sklearn", False),
    "pickle_forest": (_imputed_forest, _log_sklearn("pickle"), "sklearn", True),
    "xgboost_flavor": (_xgboost, _log_xgboost, "xgboost", True),
    "lightgbm_flavor_native": (_lightgbm, _log_lightgbm, "lightgbm", False),
}


def log_and_register(tracking_uri: str, name: str, model, log, framework: str, signature_rows, holdout) -> str:
    """Log ``model`` with ``log`` (a signature, exact pins; the holdout sample when given) and register it."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from asgard.registry.versions import HOLDOUT_ARTIFACT, ORIGIN_TAG, PLATFORM_ORIGIN
    from asgard.training import trainers

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = log(
                mlflow,
                model,
                name="model",
                signature=infer_signature(signature_rows),
                pip_requirements=trainers.pip_requirements(framework),
            )
            if holdout is not None:
                with tempfile.TemporaryDirectory() as scratch:
                    sample = Path(scratch) / Path(HOLDOUT_ARTIFACT).name
                    holdout.to_parquet(sample, index=False)
                    mlflow.log_artifact(str(sample), str(Path(HOLDOUT_ARTIFACT).parent))
        # Still pointed at the registry: its SQLite store looks the logged model up with a default client.
        version = client.create_model_version(
            name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id, tags={ORIGIN_TAG: PLATFORM_ORIGIN}
        )
    finally:
        mlflow.set_tracking_uri(None)
    return str(version.version)


@pytest.mark.parametrize("case", list(CASES))
def test_each_logged_format_is_bundled_and_answers_as_the_logged_model(registry, tmp_path, case):
    from mlflow import MlflowClient

    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import resolve_model_version

    tracking_uri, features, target = registry
    make, log, framework, with_holdout = CASES[case]
    model = make().fit(features[:600], target[:600])
    holdout = features[600:700].reset_index(drop=True)
    name = f"{case}_{uuid.uuid4().hex[:6]}"
    MlflowClient(tracking_uri, registry_uri=tracking_uri).create_registered_model(name)
    version = log_and_register(
        tracking_uri, name, model, log, framework, features.head(5), holdout if with_holdout else None
    )

    hook = MlflowHook()
    ref = resolve_model_version(hook, name, version)
    folder = tmp_path / "model"
    folder.mkdir()
    info = serving_image.export_bundle(hook, ref, folder, labels={})

    if not with_holdout:  # no sample to prove a conversion on: the native model is served
        assert info["flavor"] == "native", info["flavor_reason"]
    elif framework == "sklearn":  # converted from the estimator MLflow's loader gave back
        assert info["flavor"] == "onnx", info["flavor_reason"]
    if info["flavor"] == "native":
        assert info["native"] == {"pickled_model": "model.pkl", "format": "cloudpickle"}
        # The image installs what the version was logged with (its framework included).
        installed = serving_image.requirements_for(info, folder)
        assert {"cloudpickle", *serving_image.model_requirements(folder / "native")} <= set(installed)
    rows = features[700:760].reset_index(drop=True)
    answer = Predictor(Bundle.read(folder)).predict(
        {column: rows[column].tolist() for column in rows.columns}, len(rows), probabilities=True
    )
    assert answer["predictions"] == model.predict(rows).tolist()
    expected = model.predict_proba(rows)
    assert np.abs(np.array(answer["probabilities"]) - expected).max() < 1e-5, info["flavor_reason"]


def test_a_booster_logged_alone_is_refused_naming_what_is_served(registry, tmp_path):
    """A bare Booster has no DataFrame predict and no classes: refused, saying which estimators serve."""
    import mlflow
    import xgboost
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from asgard.core.errors import InputError
    from asgard.hooks.mlflow import MlflowHook
    from asgard.registry.versions import resolve_model_version
    from asgard.training import trainers

    tracking_uri, features, target = registry
    booster = xgboost.train({"max_depth": 2}, xgboost.DMatrix(features[:600], label=target[:600]), 5)
    name = f"booster_{uuid.uuid4().hex[:6]}"
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(name)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=client.get_experiment_by_name(EXPERIMENT).experiment_id) as run:
            info = mlflow.xgboost.log_model(
                booster,
                name="model",
                signature=infer_signature(features.head(5)),
                pip_requirements=trainers.pip_requirements("xgboost"),
            )
        client.create_model_version(name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id)
    finally:
        mlflow.set_tracking_uri(None)
    hook = MlflowHook()
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(InputError, match="serves scikit-learn-API estimators"):
        serving_image.export_bundle(hook, resolve_model_version(hook, name, "1"), folder, labels={})


# --------------------------------------------------------------------------- a real upload
