"""A registered version's predictions and metric on rows the platform chose (its holdout).

A version the platform trained is loaded here; any other (a user script's, one registered from any
run) is scored in a sandbox with its own environment (``include/sandbox/score.py``): its model file
is never unpickled in a worker, and nothing it runs can reach the platform.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from asgard.core import sandbox
from asgard.core.errors import InputError
from asgard.core.leftovers import read_left_file
from asgard.core.param_schemas import plain_requirements
from asgard.core.sandbox import Bind, owned_by_sandbox
from asgard.core.settings import REPO_ROOT
from asgard.registry import metrics
from asgard.registry.versions import SCRIPT_REQUIREMENTS_TAG, load_platform_model, trusted
from asgard.serving.image import model_requirements
from asgard.training.scripts.runner import ScriptEnvironments

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

    from asgard.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

SCORER = REPO_ROOT / "include" / "sandbox" / "score.py"
# The most a sandboxed scoring's predictions file may hold (the holdout's predictions: far less).
PREDICTIONS_MAX_BYTES = 512 * 1024 * 1024


def predict(hook: MlflowHook, version: ModelVersion, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """The version's predictions on ``features`` and, for a classifier, its class probabilities."""
    import numpy as np

    if not trusted(version.tags):
        return predict_in_sandbox(hook, version, features)
    model = load_platform_model(hook, version.name, version.version)
    names = getattr(model, "feature_names_in_", None)
    rows = features[list(names)] if names is not None else features
    probabilities = np.asarray(model.predict_proba(rows)) if hasattr(model, "predict_proba") else None
    return np.asarray(model.predict(rows)), probabilities


def metric_on(
    hook: MlflowHook, version: ModelVersion, features: pd.DataFrame, target: pd.Series, metric: str
) -> float | None:
    """``metric`` of the version on these rows (None when its predictions cannot give it)."""
    predictions, probabilities = predict(hook, version, features)
    return scores(target, predictions, probabilities).get(metric)


def scores(target: pd.Series, predictions: np.ndarray, probabilities: np.ndarray | None) -> dict[str, float]:
    """The holdout metrics of predictions: a classifier's when it gave probabilities, else a regressor's."""
    if probabilities is not None:
        return metrics.classification_metrics(target.to_numpy(), predictions, probabilities)
    return metrics.regression_metrics(target.to_numpy(), predictions)


def predict_in_sandbox(
    hook: MlflowHook, version: ModelVersion, features: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions of a model the platform did not train: loaded and run in a sandbox, never here."""
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="asgard-sandbox-score-") as scratch:
        root = Path(scratch)
        model_dir = root / "model"
        with hook.using_server():
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{version.name}/{version.version}", dst_path=str(model_dir)
            )
        signature = Model.load(str(model_dir / "MLmodel")).signature
        columns = list(signature.inputs.input_names()) if signature is not None else list(features.columns)
        missing = [column for column in columns if column not in features.columns]
        if missing:
            raise InputError(
                f"{version.name} v{version.version} needs input(s) {', '.join(missing)}, not in these rows"
            )
        inputs = root / "input"
        inputs.mkdir()
        features[columns].to_parquet(inputs / "features.parquet", index=False)
        python = ScriptEnvironments().ensure(_requirements(version, model_dir))
        lines: list[str] = []
        with owned_by_sandbox(root / "output") as output:
            outcome = sandbox.run(
                [str(python), "/asgard/score.py", "/model", "/input/features.parquet", "/output/predictions.parquet"],
                binds=[
                    Bind(python.parent.parent),
                    Bind(SCORER, "/asgard/score.py"),
                    Bind(model_dir, "/model"),
                    Bind(inputs, "/input"),
                    Bind(output, "/output", writable=True),
                ],
                # Allowed in here only: this sandbox is where such a model may be deserialized.
                env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"},
                cwd="/tmp",
                limits=sandbox.Limits(timeout_seconds=900, memory_mb=4096, max_output_bytes=1_000_000),
                scratch=root,
                output=lines.append,
            )
            if not outcome.ok:
                why = outcome.stopped_by or f"exit code {outcome.exit_code}"
                raise InputError(
                    f"{version.name} v{version.version} could not be scored in its sandbox ({why}):\n"
                    + "\n".join(outcome.tail)
                )
            # The sandbox ran the model's own code: what it left is read as a plain file only (a link, a
            # fifo or a giant is refused, naming it), never followed.
            left = read_left_file(output, "predictions.parquet", max_bytes=PREDICTIONS_MAX_BYTES)
            scored = pd.read_parquet(io.BytesIO(left))
    log.info("%s v%s scored %d rows in a sandbox", version.name, version.version, len(scored))
    probability_columns = sorted(column for column in scored.columns if column.startswith("probability_"))
    probabilities = scored[probability_columns].to_numpy() if probability_columns else None
    return scored["prediction"].to_numpy(), probabilities


def _requirements(version: ModelVersion, model_dir: Path) -> list[str]:
    """What the version's model needs: its script's requirements, else the pins it was logged with."""
    recorded = (version.tags or {}).get(SCRIPT_REQUIREMENTS_TAG)
    if recorded:
        # A tag, so whoever may tag the version: held to the same rule as a model's requirements.txt
        # (plain pins from the index; uv installs them as wheels only, so no package's build code runs).
        try:
            pins = json.loads(recorded)
        except ValueError:
            pins = None
        if not isinstance(pins, list) or not all(isinstance(pin, str) for pin in pins):
            raise InputError(
                f"{version.name} v{version.version}'s {SCRIPT_REQUIREMENTS_TAG} tag is no list of requirements"
            )
        return plain_requirements(pins, f"{version.name} v{version.version}'s {SCRIPT_REQUIREMENTS_TAG} tag")
    return model_requirements(model_dir)
