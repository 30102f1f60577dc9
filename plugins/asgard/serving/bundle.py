"""The model bundle a serving image loads: ``serving.json`` plus ``model.onnx`` (when the conversion is
proven faithful) or the native model.

Writing it means loading the logged model, and a model file can run code: the platform does it only
in a sandbox (``asgard.serving.image.export_bundle`` runs this module there, as
``python -m asgard.serving.bundle REQUEST``), never in a worker. So this module imports nothing of
Airflow or of the rest of the platform: only ``onnx_export`` beside it, and what the model needs.

The model is loaded however MLflow logged it, by MLflow's own loader of its flavor (scikit-learn's
skops, cloudpickle or pickle; XGBoost's and LightGBM's native formats). A native bundle holds the
loaded estimator written again with cloudpickle: the bundle is made here, by the platform, so the
image has one way to load a native model whatever format the version was logged in.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from asgard.serving import onnx_export

log = logging.getLogger(__name__)

NATIVE_MODEL_FILE = "model.pkl"
# How a native bundle's model file is written (``serving.json``'s ``native.format``; the image reads it).
NATIVE_FORMAT = "cloudpickle"
# The MLflow flavors a serving image serves, in the order one is chosen when a model has several.
SERVED_FLAVORS = ("sklearn", "xgboost", "lightgbm")


def write_bundle(
    folder: Path,
    model: Any,
    columns: list[dict[str, Any]],
    model_type: str,
    sample: Any,
    *,
    identity: dict[str, Any],
    labels: dict[str, str],
) -> dict[str, Any]:
    """``serving.json`` plus ``model.onnx`` (a faithful conversion) or ``native/model.pkl`` in ``folder``."""
    import cloudpickle

    conversion = onnx_export.convert(model, columns, model_type, sample)
    log.info("%s v%s: %s", identity["model_name"], identity["version"], conversion.reason)
    info: dict[str, Any] = {
        **identity,
        "model_type": model_type,
        "classes": _plain_list(getattr(model, "classes_", None)) if model_type == "classification" else None,
        "signature": {"inputs": columns},
        "flavor": "onnx" if conversion.faithful else "native",
        "flavor_reason": conversion.reason,
        "labels": labels,
    }
    native = folder / "native"
    if conversion.faithful:
        (folder / "model.onnx").write_bytes(conversion.onnx_bytes)
        info["onnx"] = {
            "label_output": conversion.label_output,
            "probability_output": conversion.probability_output,
            "numeric_input": conversion.numeric_input,
        }
        shutil.rmtree(native, ignore_errors=True)
    else:
        native.mkdir(exist_ok=True)
        with (native / NATIVE_MODEL_FILE).open("wb") as handle:
            cloudpickle.dump(model, handle)
        info["native"] = {"pickled_model": NATIVE_MODEL_FILE, "format": NATIVE_FORMAT}
    (folder / "serving.json").write_text(json.dumps(info, indent=2))
    return info


def _plain_list(values: Any) -> list | None:
    return None if values is None else [v.item() if hasattr(v, "item") else v for v in values]


def load_logged_model(model_dir: str, flavor: str) -> Any:
    """The estimator in an MLflow model folder, loaded by MLflow's own loader of ``flavor``."""
    import importlib

    from sklearn.base import BaseEstimator

    if flavor not in SERVED_FLAVORS:
        raise ValueError(f"the serving image serves {', '.join(SERVED_FLAVORS)} models, not {flavor!r} ones")
    model = importlib.import_module(f"mlflow.{flavor}").load_model(model_dir)
    if not isinstance(model, BaseEstimator):  # a bare Booster: no predict on DataFrames, no classes
        raise ValueError(
            f"the {flavor} model is a {type(model).__module__}.{type(model).__name__}; the serving image serves "
            "scikit-learn-API estimators (log an XGBClassifier or LGBMRegressor, say, not a Booster)"
        )
    return model


def main(request_path: str) -> None:
    """Load the logged model a request names, and write its bundle where the request says."""
    import pandas as pd

    request = json.loads(Path(request_path).read_text())
    model = load_logged_model(request["model_dir"], request["flavor"])
    model_type = request["model_type"] or ("classification" if hasattr(model, "predict_proba") else "regression")
    sample = pd.read_parquet(request["sample"]) if request.get("sample") else None
    write_bundle(
        Path(request["output"]),
        model,
        request["columns"],
        model_type,
        sample,
        identity=request["identity"],
        labels=request["labels"],
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1])
