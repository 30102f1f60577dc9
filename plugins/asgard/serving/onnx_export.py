"""Convert a fitted scikit-learn pipeline to ONNX, and prove the conversion faithful before using it.

The serving image answers with the ONNX model only when, on a holdout sample, its class
probabilities are within ``PROBABILITY_TOLERANCE`` of the native model's and every label is
identical (regressors: predictions within ``RELATIVE_TOLERANCE``). Otherwise the native model is
served and the reason is recorded for ``/metadata``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-6
RELATIVE_TOLERANCE = 1e-6
LABEL_OUTPUT = "label"
PROBABILITY_OUTPUT = "probabilities"
REGRESSION_OUTPUT = "variable"
# The graph's one input for every numeric column, [n, columns] in the signature's order.
NUMERIC_INPUT = "asgard.numeric_features"


@dataclass(frozen=True)
class Conversion:
    """The outcome: ONNX bytes when faithful, else why not (the native model is served)."""

    onnx_bytes: bytes | None
    reason: str
    label_output: str | None = None
    probability_output: str | None = None
    numeric_input: str | None = None
    max_probability_error: float | None = None
    rows_checked: int = 0

    @property
    def faithful(self) -> bool:
        return self.onnx_bytes is not None


def _register_boosting_converters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM estimators that are installed (converters ship with
    onnxmltools, and import their framework: a bundle's environment has only the model's own)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    registrations = []
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        registrations += [
            (
                LGBMClassifier,
                "LightGbmLGBMClassifier",
                calculate_linear_classifier_output_shapes,
                convert_lightgbm,
                {"nocl": [True, False], "zipmap": [True, False, "columns"]},
            ),
            (
                LGBMRegressor,
                "LightGbmLGBMRegressor",
                calculate_linear_regressor_output_shapes,
                convert_lightgbm,
                {"split": None},
            ),
        ]
    except ImportError:
        pass
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        registrations += [
            (
                XGBClassifier,
                "XGBoostXGBClassifier",
                calculate_linear_classifier_output_shapes,
                convert_xgboost,
                {"nocl": [True, False], "zipmap": [True, False, "columns"]},
            ),
            (XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost, None),
        ]
    except ImportError:
        pass
    for model_class, alias, shapes, converter, options in registrations:
        update_registered_converter(model_class, alias, shapes, converter, options=options)


def convert(model: Any, columns: list[dict[str, str]], model_type: str, sample: pd.DataFrame) -> Conversion:
    """ONNX for ``model`` if it reproduces the native predictions on ``sample``; else the reason."""
    if sample is None or len(sample) == 0:
        return Conversion(None, "no holdout sample to check an ONNX conversion against: serving the native model")
    try:
        onnx_bytes, numeric_input = _to_onnx(_with_one_input_per_column(model, columns, sample), columns, model_type)
    except Exception as error:  # skl2onnx raises many types for "cannot convert this"
        return Conversion(None, f"not convertible to ONNX ({type(error).__name__}: {error}): serving the native model")
    return _check(
        onnx_bytes, numeric_input, model, columns, model_type, with_optional_columns_left_out(sample, columns)
    )


def _with_one_input_per_column(model: Any, columns: list[dict[str, Any]], sample: pd.DataFrame) -> Any:
    """A model that takes one numeric matrix (a bare estimator, as scripts often log it) behind a
    passthrough ColumnTransformer, so its ONNX graph takes one input per column (the numeric ones then
    gathered into one, ``_one_numeric_input``); it predicts exactly what the model does (the check below
    holds it to that)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    first = model.steps[0][1] if isinstance(model, Pipeline) else model
    if isinstance(first, ColumnTransformer) or any(column["type"] == "string" for column in columns):
        return model
    names = [column["name"] for column in columns]
    inputs = ColumnTransformer([("inputs", "passthrough", names)]).fit(sample[names])
    return Pipeline([("inputs", inputs), ("model", model)])


def with_optional_columns_left_out(sample: pd.DataFrame, columns: list[dict[str, Any]], rows: int = 20) -> pd.DataFrame:
    """The sample, plus for each optional column some of its rows with that column missing: what a
    request that leaves the column out becomes in the server, so the check covers it too."""
    import pandas as pd

    gaps = []
    for column in columns:
        if not column.get("required", True):
            rows_without = sample.head(rows).copy()
            rows_without[column["name"]] = float("nan")  # as the server hands the model a missing value
            gaps.append(rows_without)
    return pd.concat([sample, *gaps], ignore_index=True) if gaps else sample


def _to_onnx(model: Any, columns: list[dict[str, str]], model_type: str) -> tuple[bytes, str | None]:
    """The ONNX model's bytes, and the name of its one numeric input (None: one input per column)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    _register_boosting_converters()
    model = _string_missing_values(model)
    initial_types = [
        (c["name"], StringTensorType([None, 1]) if c["type"] == "string" else FloatTensorType([None, 1]))
        for c in columns
    ]
    options = {"zipmap": False} if model_type == "classification" else None
    onnx_model = convert_sklearn(
        model, initial_types=initial_types, options=options, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    numeric_input = _one_numeric_input(onnx_model, columns)
    return onnx_model.SerializeToString(), numeric_input


def _one_numeric_input(onnx_model: Any, columns: list[dict[str, str]]) -> str | None:
    """Feed the numeric columns as one [n, columns] tensor: the matrix the graph gathers them into,
    when that is all it does with them, else through a Split node inside the graph that hands it to
    the per-column inputs the converter made; string columns keep their own inputs.

    ONNX Runtime checks and wraps every input on every call: a 1-row prediction of six inputs costs
    about a quarter more than of one, and the server already holds the numeric columns as one matrix.
    """
    from onnx import TensorProto, helper

    numeric = [column["name"] for column in columns if column["type"] != "string"]
    declared = {graph_input.name for graph_input in onnx_model.graph.input}
    if len(numeric) < 2 or NUMERIC_INPUT in declared or not declared.issuperset(numeric):
        return None
    graph = onnx_model.graph
    if _gather_columns_directly(graph, numeric):
        return _declare_numeric_input(graph, numeric)
    ones = [1] * len(numeric)
    opset = next(entry.version for entry in onnx_model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset >= 13:  # the sizes became an input in opset 13; an attribute before
        sizes = helper.make_tensor(f"{NUMERIC_INPUT}.sizes", TensorProto.INT64, [len(numeric)], ones)
        graph.initializer.append(sizes)
        split = helper.make_node("Split", [NUMERIC_INPUT, sizes.name], numeric, axis=1, name=NUMERIC_INPUT)
    else:
        split = helper.make_node("Split", [NUMERIC_INPUT], numeric, axis=1, split=ones, name=NUMERIC_INPUT)
    graph.node.insert(0, split)
    return _declare_numeric_input(graph, numeric)


def _gather_columns_directly(graph: Any, numeric: list[str]) -> bool:
    """When the graph only gathers the numeric columns back into one matrix (a Concat of exactly them,
    in order, on axis 1, and nothing else reads them), let that matrix be the numeric input itself:
    a Split into columns and a Concat back cost two kernels on every call (a sixth of a 1-row
    prediction of the sample models). True when the graph was rewired."""
    readers = [node for node in graph.node if set(node.input) & set(numeric)]
    if len(readers) != 1:
        return False
    (concat,) = readers
    axis = next((attribute.i for attribute in concat.attribute if attribute.name == "axis"), None)
    if concat.op_type != "Concat" or list(concat.input) != numeric or axis not in (1, -1):
        return False
    if concat.output[0] in {graph_output.name for graph_output in graph.output}:
        return False
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name == concat.output[0]:
                node.input[position] = NUMERIC_INPUT
    graph.node.remove(concat)
    return True


def _declare_numeric_input(graph: Any, numeric: list[str]) -> str:
    """The graph's inputs: the numeric columns' one matrix first, then the string columns' own."""
    from onnx import TensorProto, helper

    kept = [graph_input for graph_input in graph.input if graph_input.name not in numeric]
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.FLOAT, [None, len(numeric)]))
    graph.input.extend(kept)
    return NUMERIC_INPUT


def _string_missing_values(model: Any) -> Any:
    """A copy whose string imputers treat "" as missing: ONNX string tensors cannot hold NaN.

    ``feeds`` (and the serving app) send a missing category as "", so the copy imputes exactly
    the values the original imputes.
    """
    import copy

    from sklearn.impute import SimpleImputer

    def fitted_steps(estimator: Any):
        yield estimator
        for _, child, *_ in getattr(estimator, "steps", []) or getattr(estimator, "transformers_", []):
            if not isinstance(child, str):  # ColumnTransformer's "drop"/"passthrough"
                yield from fitted_steps(child)

    model = copy.deepcopy(model)
    for step in fitted_steps(model):
        statistics = getattr(step, "statistics_", None)
        if isinstance(step, SimpleImputer) and statistics is not None and statistics.dtype == object:
            step.missing_values = ""
    return model


def feeds(frame: pd.DataFrame, columns: list[dict[str, str]], numeric_input: str | None = None) -> dict[str, Any]:
    """The ONNX inputs for a frame, as the serving app builds them: the numeric columns as one
    [n, columns] tensor named ``numeric_input`` (or, when None, one [n, 1] tensor each), one [n, 1]
    tensor per string column."""
    import numpy as np

    result = {}
    numeric = [column["name"] for column in columns if column["type"] != "string"]
    if numeric_input is not None:
        result[numeric_input] = frame[numeric].to_numpy(dtype=np.float32)
    for column in columns:
        values = frame[column["name"]]
        if column["type"] == "string":
            result[column["name"]] = values.fillna("").astype(str).to_numpy(dtype=object).reshape(-1, 1)
        elif numeric_input is None:
            result[column["name"]] = values.to_numpy(dtype=np.float32).reshape(-1, 1)
    return result


def _check(
    onnx_bytes: bytes,
    numeric_input: str | None,
    model: Any,
    columns: list[dict[str, str]],
    model_type: str,
    sample: pd.DataFrame,
) -> Conversion:
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = [output.name for output in session.get_outputs()]
    got = session.run(None, feeds(sample, columns, numeric_input))
    rows = len(sample)
    if model_type == "classification":
        label_output, probability_output = outputs[0], outputs[1]
        probabilities = got[1]
        # The server labels rows from the probabilities (asgard_serving.model.label_indices).
        labels = np.asarray(model.classes_)[np.argmax(np.round(probabilities, 6), axis=1)]
        expected_labels = np.asarray(model.predict(sample))
        expected_probabilities = np.asarray(model.predict_proba(sample))
        error = float(np.max(np.abs(probabilities - expected_probabilities)))
        mismatched = int(np.sum(labels.astype(expected_labels.dtype) != expected_labels))
        if mismatched or error > PROBABILITY_TOLERANCE:
            return Conversion(
                None,
                f"ONNX differs from the native model on the {rows}-row holdout sample (max probability error "
                f"{error:.2e}, {mismatched} different labels): serving the native model",
                max_probability_error=error,
                rows_checked=rows,
            )
        return Conversion(
            onnx_bytes,
            f"ONNX: probabilities within {error:.1e} of the native model and identical labels on {rows} holdout rows",
            label_output=label_output,
            probability_output=probability_output,
            numeric_input=numeric_input,
            max_probability_error=error,
            rows_checked=rows,
        )
    predicted = got[0].ravel().astype(np.float64)
    expected = np.asarray(model.predict(sample), dtype=np.float64)
    relative = float(np.max(np.abs(predicted - expected) / np.maximum(np.abs(expected), 1.0)))
    if relative > RELATIVE_TOLERANCE:
        return Conversion(
            None,
            f"ONNX differs from the native model on the {rows}-row holdout sample (max relative error "
            f"{relative:.2e}): serving the native model",
            rows_checked=rows,
        )
    return Conversion(
        onnx_bytes,
        f"ONNX: predictions within {relative:.1e} (relative) of the native model on {rows} holdout rows",
        label_output=outputs[0],
        numeric_input=numeric_input,
        rows_checked=rows,
    )
