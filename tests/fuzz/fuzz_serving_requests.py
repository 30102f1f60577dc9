"""Coverage-guided fuzzing (atheris) of the serving app's request path: any body on ``/predict`` and
``/invocations``, against a real bundle (ONNX, or native with ``--native``), decoded, checked and
predicted as the app does it, must be answered with a 2xx or a 4xx; a 5xx or an exception escaping
the path is a crash.

    python tests/fuzz/fuzz_serving_requests.py -runs=3000            # CI's bounded run (tests/fuzz)
    python tests/fuzz/fuzz_serving_requests.py -max_total_time=3600  # a longer one, by hand
(with PYTHONPATH=plugins:include:include/serving)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

from asgard_serving import app as serving_app
from asgard_serving import model as serving_model

PATHS = ("/predict", "/invocations")
SEEDS = (
    b'{"inputs": {"total_purchases": [10], "avg_purchase_value": [5.5]}, "return_probabilities": true}',
    b'[{"total_purchases": 1, "avg_purchase_value": 2}]',
    b'{"dataframe_split": {"columns": ["total_purchases"], "data": [[1]]}}',
    b'{"dataframe_records": [{"total_purchases": NaN}]}',
    b'{"entities": {"customer_id": [1]}}',
)


def bundle(folder: Path, native: bool) -> Path:
    """A fitted classifier's bundle, written by the platform's exporter."""
    from asgard.serving.bundle import write_bundle
    from asgard.training import trainers
    from sample_data.models import SEED_FEATURES, training_frame

    features, target = training_frame(customers=600)
    spec = trainers.ModelSpec.from_request(
        {"framework": "sklearn", "model_type": "classification", "hyperparameters": {"params": {"n_estimators": 5}}}
    )
    model = spec.fit(features, target)
    columns = [{"name": name, "type": "double", "required": True} for name in SEED_FEATURES]
    folder.mkdir()
    identity = {"model_name": "fuzzed", "version": "1", "run_id": "r", "source": "models:/m-1"}
    # No holdout sample: the exporter refuses to trust a conversion it cannot check -> native.
    write_bundle(
        folder, model, columns, "classification", None if native else features.head(200), identity=identity, labels={}
    )
    return folder


def _instrument(value) -> None:
    """Instrument a function, or a class's functions, of the serving app (in place)."""
    import inspect

    if inspect.isfunction(value) and value.__module__.startswith("asgard_serving"):
        atheris.instrument_func(value)
    elif inspect.isclass(value) and value.__module__.startswith("asgard_serving"):
        for member in vars(value).values():
            if inspect.isfunction(member):
                atheris.instrument_func(member)


def main() -> None:
    native = "--native" in sys.argv
    argv = [arg for arg in sys.argv if arg != "--native"]
    scratch = Path(tempfile.mkdtemp(prefix="asgard-fuzz-"))
    folder = bundle(scratch / "model", native)
    # The app's own request path, in this thread (coverage follows it): the body decoders, the path's
    # handler, and the prediction of what passes, exactly as asgard_serving.app.PredictionPaths runs them.
    limits = serving_app.Limits()
    state = serving_app.State()
    state.predictor = serving_model.Predictor(
        serving_model.Bundle.read(folder), max_string_chars=limits.max_string_chars
    )
    predictions = serving_app.Predictions(state, limits, serving_app.ModelTime())
    handlers = {"/predict": predictions.predict, "/invocations": predictions.invocations}

    def answer(path: str, raw: bytes) -> int:
        try:
            try:
                body = serving_app._loads(raw)
            except ValueError as error:
                body = serving_app._loads_non_finite(raw, error)
        except ValueError:
            return 400
        ask = handlers[path](body)
        if type(ask) is serving_app.EntityAsk:
            return 503  # no online store here: fuzz_entity_ids.py fuzzes the entity-id reader
        if type(ask) is not serving_app.Ask:
            return ask[0]
        return predictions.answer(ask)[0]

    def one_input(data: bytes) -> None:
        if not data:
            return
        path, body = PATHS[data[0] % len(PATHS)], data[1:]  # the first byte picks the path
        status = answer(path, body)
        if status >= 500 and status != 503:
            raise AssertionError(f"{path} answered {status} to {body[:200]!r}")

    corpus = scratch / "corpus"  # libFuzzer starts from the known shapes: JSON is hard to find from scratch
    corpus.mkdir()
    for number, seed in enumerate(SEEDS):
        for index in range(len(PATHS)):
            (corpus / f"seed-{number}-{index}").write_bytes(bytes([index]) + seed)
    atheris.instrument_func(one_input)
    for module in (serving_app, serving_model):  # the serving app's own code: where coverage is counted
        for value in list(vars(module).values()):
            _instrument(value)
    atheris.Setup([*argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
