"""Which objects in a namespace are a model's own: the only ones the Kubernetes target changes or removes.

Every object the target applies (``kubernetes_manifests``) carries the ``app.kubernetes.io/part-of=asgard``
label and names its model: the ``asgard.io/model-name`` annotation (the Deployment, the Service, a
trial's objects) or, on the autoscaler and the disruption budget, the ``asgard.io/model`` label. An
existing object of a name the deploy would apply without that mark (another team's workload, a
hand-made Service), or marked as another model's, is never overwritten, taken over by a forced
server-side apply, or deleted by a rollback or a trial's clean-up: the deploy fails naming it.
"""

from __future__ import annotations

from typing import Any

from asgard.core.errors import InputError
from asgard.deploy.kubernetes_manifests import model_label

PART_OF, PLATFORM = "app.kubernetes.io/part-of", "asgard"
MODEL_ANNOTATION, MODEL_LABEL = "asgard.io/model-name", "asgard.io/model"


class ForeignObject(InputError):
    """An object the deploy would change is not the model's own: it stays as it is; retrying cannot help."""


def problem(current: dict[str, Any] | None, model_name: str) -> str | None:
    """Why ``current`` (as the API server holds it) is not ``model_name``'s own; None when it is, or absent."""
    if current is None:
        return None
    metadata = current.get("metadata") or {}
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    if labels.get(PART_OF) != PLATFORM:
        return f"Asgard did not create it (it has no {PART_OF}={PLATFORM} label)"
    owner = annotations.get(MODEL_ANNOTATION)
    if owner is not None:
        return None if owner == model_name else f"it serves model {owner!r}"
    label = labels.get(MODEL_LABEL)
    if label is None:
        return f"it names no model (no {MODEL_ANNOTATION} annotation or {MODEL_LABEL} label)"
    return None if label == model_label(model_name) else f"it belongs to model {label!r}"


def refusal(kind: str, namespace: str, name: str, model_name: str, why: str) -> ForeignObject:
    return ForeignObject(
        f"{kind} {namespace}/{name} does not belong to model {model_name!r}: {why}. Asgard never overwrites or removes "
        "an object it does not own: remove or rename it, or deploy the model to another of its team's namespaces"
    )


def check_all(found: dict[tuple[str, str], dict[str, Any] | None], namespace: str, model_name: str) -> None:
    """Refuse the deploy, before it changes anything, when any object it would apply is not the model's own.

    ``found``: (kind, name) -> the object as read (None: absent). The error names every foreign object.
    """
    refused = [(kind, name, why) for (kind, name), body in found.items() if (why := problem(body, model_name))]
    if len(refused) == 1:
        kind, name, why = refused[0]
        raise refusal(kind, namespace, name, model_name, why)
    if refused:
        named = "; ".join(f"{kind} {namespace}/{name}: {why}" for kind, name, why in refused)
        raise ForeignObject(
            f"{len(refused)} objects model {model_name!r} would apply are not its own ({named}). Asgard never "
            "overwrites or removes an object it does not own: remove or rename them, or deploy the model to "
            "another of its team's namespaces"
        )
