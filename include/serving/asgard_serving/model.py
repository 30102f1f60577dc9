"""The model baked into the image: its bundle on disk, input checks against its signature, prediction.

A bundle is a folder written at image-build time by the platform:

``serving.json``  name, version, run id, model type, classes, signature, flavor, image labels
``model.onnx``    the model converted to ONNX (flavor ``onnx``, checked against the native model), or
``native/``       the model's estimator (flavor ``native``), written by the platform with cloudpickle

No Airflow, no MLflow: the image carries only what answering a request needs.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

NUMERIC_TYPES = {"double", "float", "long", "integer"}
INTEGER_TYPES = {"long", "integer"}
STRING_TYPES = {"string"}
BOOLEAN_TYPES = {"boolean"}
FLOAT32_MAX = 3.4028234663852886e38
ONE_MISSING = [None]  # the value of a column a 1-row request leaves out
DICT_TYPE = frozenset({dict})
# How scikit-learn's check_array words a refusal of the input's values (NaN, infinity, too large).
SKLEARN_INPUT_REFUSALS = ("Input X contains", "Input contains", "Input y contains")


class InputError(ValueError):
    """The request does not match the model's signature; the message names the column and the problem."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class Bundle:
    folder: Path
    info: dict[str, Any]

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Bundle:
        folder = Path(folder)
        return cls(folder, json.loads((folder / "serving.json").read_text()))

    @property
    def columns(self) -> list[Column]:
        return [Column(c["name"], c["type"], c.get("required", True)) for c in self.info["signature"]["inputs"]]

    @property
    def is_classifier(self) -> bool:
        return self.info["model_type"] == "classification"


def columns_of(payload: Any, signature: Signature) -> dict[str, list]:
    """Columnar form of ``{"col": [..]}`` or ``[{"col": v}, ...]`` (a list of records).

    Each record's keys are checked against the signature as the records are walked (in C), before
    any column is built: a column per distinct key of all records would cost rows times keys (a 1 MB
    body of records with a key each took minutes), while the model's columns are known and few."""
    if isinstance(payload, dict):
        return {name: values if isinstance(values, list) else [values] for name, values in payload.items()}
    if isinstance(payload, list):
        if not set(map(type, payload)) <= DICT_TYPE:
            raise InputError("a list of records must hold JSON objects, one per row")
        if not all(map(signature.known.issuperset, payload)):  # stops at the first record with an unknown key
            row = next(row for row, record in enumerate(payload) if not signature.known.issuperset(record))
            signature.refuse_unexpected(payload[row], row)
        names = dict.fromkeys(chain.from_iterable(payload))  # the signature's, each once
        return {name: [record.get(name) for record in payload] for name in names}
    raise InputError('inputs must be an object of columns ({"col": [values]}) or a list of records')


def check_columns(columns: dict[str, list], expected: list[Column] | Signature) -> int:
    """Check names, lengths and value types against the signature; return the row count."""
    signature = expected if isinstance(expected, Signature) else Signature(expected)
    return signature.check(columns)


class Signature:
    """A model's input columns, with what checking a request against them needs worked out once."""

    def __init__(self, columns: list[Column], *, max_string_chars: int = 10_000) -> None:
        self.columns = columns
        self.max_string_chars = max_string_chars
        self.known = frozenset(column.name for column in columns)
        self.required = [column.name for column in columns if column.required]
        # Columns grouped by the value types they take: a request's values are checked one group at a
        # time, in one pass in C over all of its columns' values.
        groups: dict[frozenset, list[Column]] = {}
        for column in columns:
            if column.type in ALLOWED_TYPES:
                groups.setdefault(ALLOWED_TYPES[column.type], []).append(column)
        # Per group: its allowed types, its columns, and whether any of them takes integers only.
        self.groups = [
            (allowed, group, any(column.type in INTEGER_TYPES for column in group)) for allowed, group in groups.items()
        ]

    def check(self, columns: dict[str, list]) -> int:
        """Names, lengths and value types of a request's columns; its row count."""
        missing = [name for name in self.required if name not in columns]
        if missing:
            raise InputError(f"missing column(s): {', '.join(missing)}")
        if not self.known.issuperset(columns):
            self.refuse_unexpected(columns)
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise InputError(f"columns have different lengths: {sorted(lengths)}")
        rows = lengths.pop() if lengths else 0
        if rows == 0:
            raise InputError("no rows to predict")
        every_column = len(columns) == len(self.known)  # the names are known: all sent, none left out
        for allowed, group, integers in self.groups:
            sent = group if every_column else [column for column in group if column.name in columns]
            kinds = set(map(type, chain.from_iterable([columns[column.name] for column in sent])))
            if not kinds <= allowed or (integers and float in kinds):
                for column in sent:  # name the column, row and value (the float may be in another column)
                    _check_values(column, columns[column.name], allowed)
            if str in allowed:  # one pass in C per string column; numbers need none
                for column in sent:
                    self._check_lengths(column, columns[column.name])
        return rows

    def refuse_unexpected(self, names: Iterable[str], row: int | None = None) -> NoReturn:
        """Refuse names outside the signature (a request's, or row ``row``'s), naming the first few."""
        extra = listed_names([name for name in names if name not in self.known])
        where = "" if row is None else f" in row {row}"
        raise InputError(f"unexpected column(s){where}: {extra}; the model takes {', '.join(sorted(self.known))}")

    def _check_lengths(self, column: Column, values: list) -> None:
        limit = self.max_string_chars
        if max(map(len, filter(None, values)), default=0) > limit:  # (null and "" are filtered out)
            row = next(row for row, value in enumerate(values) if value is not None and len(value) > limit)
            raise InputError(
                f"column {column.name!r}: row {row} holds {len(values[row])} characters; "
                f"at most {limit} (ASGARD_SERVING_MAX_STRING_CHARS)"
            )


ALLOWED_TYPES = {
    **dict.fromkeys(NUMERIC_TYPES, frozenset({int, float, type(None)})),
    **dict.fromkeys(STRING_TYPES, frozenset({str, type(None)})),
    **dict.fromkeys(BOOLEAN_TYPES, frozenset({bool, type(None)})),
}


def _check_values(column: Column, values: list, allowed: frozenset) -> None:
    # One pass in C over the value types; the row-by-row search only runs to name a bad value.
    # (bool is not allowed for numbers: true/false is not a number a client meant to send.)
    if not set(map(type, values)) <= allowed:
        for row, value in enumerate(values):
            if type(value) is NonFinite:
                raise InputError(
                    f"column {column.name!r}: row {row} holds {value}, not a finite number "
                    "(send null for a missing value)"
                )
            if type(value) not in allowed:
                kind = {"string": "a string column", "boolean": "boolean"}.get(column.type, column.type)
                raise InputError(f"column {column.name!r} is {kind}: row {row} holds {shown_value(value)}")
    if column.type in INTEGER_TYPES:
        for row, value in enumerate(values):
            if isinstance(value, float) and not value.is_integer():
                raise InputError(f"column {column.name!r} is {column.type}: row {row} holds {value!r}")


class NonFinite:
    """A ``NaN``, ``Infinity`` or ``-Infinity`` literal of a request body (not JSON, though some clients
    write it: Python's ``json.dumps``, pandas): kept as itself through parsing so that the column check
    refuses it, naming the column, rather than taking it for a missing value or a number."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal

    def __repr__(self) -> str:
        return self.literal


def shown_value(value: Any, width: int = 60) -> str:
    """A value as an error message shows it: short, and without walking a nested one (whose repr could
    be as large as the body, or deeper than the interpreter's recursion limit)."""
    if isinstance(value, list | dict):
        return "a JSON array" if isinstance(value, list) else "a JSON object"
    shown = repr(value)
    return shown if len(shown) <= width else f"{shown[:width]}... ({len(shown)} characters)"


def listed_names(names: list[str], first: int = 10) -> str:
    """The first few names, each cut short: a refusal is never as large as the body that caused it."""
    shown = ", ".join(name if len(name) <= 60 else f"{name[:60]}..." for name in names[:first])
    return shown if len(names) <= first else f"{shown} and {len(names) - first} more"


def load_native_model(bundle: Bundle) -> Any:
    """A native bundle's estimator. The platform's bundler wrote it with cloudpickle, whatever format
    MLflow logged the version in (skops, pickle, XGBoost's own...): it loaded it with MLflow's loader
    of the version's flavor, in a sandbox. Bundles made before ``native.format`` existed are cloudpickle too."""
    native = bundle.info["native"]
    written = native.get("format", "cloudpickle")
    if written != "cloudpickle":
        raise ValueError(f"the bundle's native model is written as {written!r}; this image reads cloudpickle only")
    import cloudpickle

    with (bundle.folder / "native" / native["pickled_model"]).open("rb") as handle:
        return cloudpickle.load(handle)


class Predictor:
    """Loads the bundle's model once and predicts on checked columns."""

    def __init__(self, bundle: Bundle, *, max_string_chars: int = 10_000) -> None:
        self.bundle = bundle
        self.signature = Signature(bundle.columns, max_string_chars=max_string_chars)
        self.flavor = bundle.info["flavor"]
        self.classes = bundle.info.get("classes")
        self.numeric = [column.name for column in self.signature.columns if column.type not in STRING_TYPES]
        self.strings = [column.name for column in self.signature.columns if column.type in STRING_TYPES]
        if self.flavor == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            # One thread per worker: requests are small, and workers already use every core.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = onnxruntime.InferenceSession(
                str(bundle.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            onnx_info = bundle.info["onnx"]
            self.label_output = onnx_info["label_output"]
            self.probability_output = onnx_info.get("probability_output")
            # The numeric columns' one input (asgard.serving.onnx_export), or None: one input per column.
            self.numeric_input = onnx_info.get("numeric_input")
            self.output = self.probability_output or self.label_output
            self.one_row = None
            if self.numeric_input is not None and not self.strings:
                self.one_row = OneRow(self.session, self.numeric_input, len(self.numeric), self.output)
        else:
            self.model = load_native_model(bundle)

    def predict(self, columns: dict[str, list], rows: int, *, probabilities: bool) -> dict[str, Any]:
        if self.flavor == "onnx":
            return self._predict_onnx(columns, rows, probabilities)
        return self._predict_native(columns, rows, probabilities)

    def _predict_onnx(self, columns: dict[str, list], rows: int, probabilities: bool) -> dict[str, Any]:
        one_row = self.one_row
        if rows == 1 and one_row is not None and one_row.lock.acquire(blocking=False):
            try:
                with np.errstate(over="ignore"):  # a number beyond float32 becomes infinity, refused below
                    one_row.input[0] = [columns.get(name, ONE_MISSING)[0] for name in self.numeric]
                self._refuse_beyond_float32(one_row.input)
                return self._answer(one_row.run(), probabilities)
            finally:
                one_row.lock.release()
        missing = [None] * rows
        feeds = {}
        if self.numeric:
            # Every numeric column in one conversion (null becomes NaN, what the imputer fills): one
            # allocation and one range check per request.
            with np.errstate(over="ignore"):  # a number beyond float32 becomes infinity, refused below
                matrix = np.array([columns.get(name, missing) for name in self.numeric], dtype=np.float32)
            self._refuse_beyond_float32(matrix.T)
            if self.numeric_input is not None:  # rows by columns, as the graph's one numeric input takes them
                feeds[self.numeric_input] = np.ascontiguousarray(matrix.T)
            else:
                feeds.update(zip(self.numeric, matrix[:, :, np.newaxis], strict=True))
        for name in self.strings:
            values = columns.get(name, missing)
            feeds[name] = np.array(["" if v is None else v for v in values], dtype=object).reshape(-1, 1)
        return self._answer(self.session.run([self.output], feeds)[0], probabilities)

    def _refuse_beyond_float32(self, matrix: np.ndarray) -> None:
        """JSON has no infinity: an infinite value in the model's input (rows by numeric columns) is a
        number beyond what its float32 holds."""
        if np.isinf(matrix).any():
            beyond = self.numeric[int(np.isinf(matrix).any(axis=0).argmax())]
            raise InputError(f"column {beyond}: a value is beyond the model's float32 range (±3.4e38)")

    def _answer(self, output: np.ndarray, probabilities: bool) -> dict[str, Any]:
        """The answer from the graph's output (copied out: it may be ``OneRow``'s buffer)."""
        if self.probability_output is None:  # a regressor
            return {"predictions": _plain(output.ravel().astype(float).tolist())}
        classes = self.classes
        result: dict[str, Any] = {"predictions": [classes[i] for i in label_indices(output).tolist()]}
        if probabilities:
            result["probabilities"] = output.tolist()
            result["classes"] = classes
        return result

    def _predict_native(self, columns: dict[str, list], rows: int, probabilities: bool) -> dict[str, Any]:
        import pandas as pd

        missing = [None] * rows
        frame = pd.DataFrame({column.name: columns.get(column.name, missing) for column in self.signature.columns})
        for column in self.signature.columns:
            if column.type in NUMERIC_TYPES:
                frame[column.name] = frame[column.name].astype("float64")
                # Tree models compare in float32: a value beyond its range is the request's problem.
                if (frame[column.name].abs() > FLOAT32_MAX).any():
                    raise InputError(f"column {column.name}: a value is beyond the model's float32 range (±3.4e38)")
            elif column.type in STRING_TYPES:
                # NaN, not None, is what scikit-learn's imputers fill (an absent optional column too).
                values = frame[column.name].astype("object")
                frame[column.name] = values.where(values.notna(), float("nan"))
        try:
            result: dict[str, Any] = {"predictions": _plain(self.model.predict(frame).tolist())}
            if probabilities and self.bundle.is_classifier and hasattr(self.model, "predict_proba"):
                result["probabilities"] = self.model.predict_proba(frame).tolist()
                result["classes"] = self.classes
        except ValueError as error:
            # scikit-learn's own input validation (check_array) refusing the values is the request's
            # problem; any other failure of the model is the server's, and answers 500.
            if not str(error).startswith(SKLEARN_INPUT_REFUSALS):
                raise
            raise InputError(f"the model refused the input: {error}") from error
        return result


class OneRow:
    """ONNX Runtime bound once (IOBinding) to a one-row input buffer and output buffer of a graph whose
    only input is the numeric matrix.

    ``session.run`` pays on every call for checking the feeds, wrapping the input, allocating the
    output and handing it back as a new array: a 1-row ``/invocations`` took 41 µs in-process with
    it, 34 µs with bound buffers, which are filled and read in place instead. One
    request at a time holds them (``lock``, never waited for: a concurrent request, on a worker
    thread, takes ``session.run``).
    """

    def __init__(self, session: Any, input_name: str, width: int, output_name: str) -> None:
        self.session = session
        self.input = np.zeros((1, width), dtype=np.float32)
        # The output's type and shape for one row, from one prediction (which also warms the session up).
        self.output = np.empty_like(session.run([output_name], {input_name: self.input})[0], order="C")
        self.binding = session.io_binding()
        self.binding.bind_cpu_input(input_name, self.input)
        self.binding.bind_output(
            output_name, "cpu", 0, self.output.dtype.type, list(self.output.shape), self.output.ctypes.data
        )
        self.lock = threading.Lock()

    def run(self) -> np.ndarray:
        """The output for the row in ``input`` (the bound buffer: read it before the lock is released)."""
        self.session.run_with_iobinding(self.binding)
        return self.output


def label_indices(probabilities: Any) -> Any:
    """The class each row gets: the most probable one, ties to the first, as scikit-learn decides.

    Probabilities are rounded to 1e-6 first: float32 arithmetic can split an exact tie (0.5 / 0.5)
    by one unit in the last place, and the native model resolves ties to the first class.
    (asgard.serving.onnx_export checks conversions with this same rule.) ``np.round(p, 6)`` is
    ``rint(p * 1e6) / 1e6``; the division changes no order, so it is left out (a third of the cost).
    """
    scaled = probabilities * 1e6
    return np.rint(scaled, out=scaled).argmax(axis=1)


def _plain(values: list) -> list:
    """NaN is not JSON: a regressor's NaN output becomes null."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
