"""Inside a sandbox: a model the platform does not trust predicts on rows the platform chose.

    python score.py MODEL_DIR FEATURES.parquet PREDICTIONS.parquet

MODEL_DIR is the model's MLflow artifact folder. The output has ``prediction`` and, when the model
gives them, ``probability_<i>`` for each class. Runs in the model's own environment (its script's
requirements, with mlflow-skinny, pandas and pyarrow), with no network: nothing it loads can reach
the platform.
"""

import sys

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import Model


def main(model_dir: str, features: str, output: str) -> None:
    frame = pd.read_parquet(features)
    flavors = Model.load(f"{model_dir}/MLmodel").flavors
    probabilities = None
    if "sklearn" in flavors:
        model = mlflow.sklearn.load_model(model_dir)
        predictions = model.predict(frame)
        if hasattr(model, "predict_proba"):
            probabilities = np.asarray(model.predict_proba(frame))
    else:
        predictions = mlflow.pyfunc.load_model(model_dir).predict(frame)
    scored = pd.DataFrame({"prediction": np.asarray(predictions).ravel()})
    for index in range(0 if probabilities is None else probabilities.shape[1]):
        scored[f"probability_{index}"] = probabilities[:, index]
    scored.to_parquet(output, index=False)
    print(f"scored {len(scored)} rows")


if __name__ == "__main__":
    main(*sys.argv[1:4])
