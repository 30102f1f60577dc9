"""Whether answers by entity id may show what the online store holds: the deployment decides.

``/predict`` by entity id is public. Unless the model's deployment turns it on (``deploy_model``'s
``expose_features``, handed to the server as ``ASGARD_SERVING_EXPOSE_FEATURES=true``), an answer shows
nothing of the store beyond the model's predictions:

- ``return_features: true`` is refused with a 403 saying why, rather than silently answered without
  them: a client that asks for the features and gets an answer without them would take their absence
  for a bug (or a store with no features), while the refusal names the switch that turns them on.
- an id the store does not hold is answered exactly as one it holds: predicted from missing features
  (Feast's ``get_online_features`` answers None for it), with no ``feature_timestamps`` (None only for
  such ids), no 422 naming it and no ``missing`` list. Status, shape and fields are the same for every
  id; what stays is the prediction itself, the model's for an entity it knows nothing about, which a
  known entity whose stored features are all missing gets too.
- a model that cannot predict from missing features (a required input without an imputer) would
  answer an unknown id with a refusal a held one never gets: such a deployment refuses every request
  by id alike (403), naming the switch, and keeps predicting requests that carry their features.

Turned on, answers are as they always were: features on request, their times, unknown ids a 422
naming them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgard_serving.model import Predictor

ENVIRONMENT = "ASGARD_SERVING_EXPOSE_FEATURES"
SWITCH = "deploy_model conf expose_features: true"
RETURN_FEATURES_REFUSAL = (
    403,
    f"return_features is off: this deployment does not return stored features ({SWITCH} turns it on)",
)
# What an answer by id says when the stored features or the model fail: no id, no value.
STORED_FEATURES_FAILED = "the model could not predict from the features stored for these ids"


def exposed(value: str | None) -> bool:
    """``ASGARD_SERVING_EXPOSE_FEATURES`` read: true or false (unset or empty: false); anything else
    stops the server, naming it, rather than guess which way a typo meant."""
    spelled = (value or "false").strip().lower()
    if spelled not in ("true", "false"):
        raise RuntimeError(f"{ENVIRONMENT} must be true or false, not {value!r}")
    return spelled == "true"


def featureless_refusal(predictor: Predictor) -> tuple[int, str] | None:
    """None when the model predicts an entity with every feature missing (as an id the store does not
    hold reads); else the refusal every request by id gets (checked once, at start-up)."""
    import math

    columns = {column.name: [None] for column in predictor.signature.columns}
    try:
        answer = predictor.predict(columns, 1, probabilities=predictor.bundle.is_classifier)
        # A model without imputation may also answer NaN (null in JSON), which a held id never gets.
        numbers = [*answer["predictions"], *(answer.get("probabilities") or [[]])[0]]
        if any(value is None or (isinstance(value, float) and math.isnan(value)) for value in numbers):
            raise ValueError("it answers a missing value for it")
    except Exception as error:  # any failure: an unknown id's answer would differ from a known one's
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        return 403, (
            "this deployment does not predict by entity id: the model cannot predict an entity without "
            f"features ({reason}), so its answers would tell which ids the online store holds ({SWITCH} "
            "turns it on; requests carrying their features are predicted as usual)"
        )
    return None
