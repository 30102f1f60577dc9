"""Secret references of train_script (asgard.training.scripts.secrets): the shape and the team they may name.
Resolving them in a real run (masked in the log, absent from the conf): tests/integration/test_train_script_dag.py."""

from __future__ import annotations

import pytest

from asgard.training.scripts.secrets import SecretReferenceError, checked_references


def test_references_of_the_models_team_pass():
    refs = {"TOKEN": "variable:alpha.api_token", "DB": "connection:alpha.warehouse.ro"}
    assert checked_references(refs, "alpha") == {
        "DB": ("connection", "alpha.warehouse.ro"),
        "TOKEN": ("variable", "alpha.api_token"),
    }


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("variable:beta.api_token", "may name only team 'alpha'"),
        ("variable:api_token", "is not 'variable:<team>.<key>'"),
        ("plain-secret-value", "is not 'variable:<team>.<key>'"),
        ("connection:alpha", "is not 'variable:<team>.<key>'"),
        ("secret:alpha.x", "is not 'variable:<team>.<key>'"),
        ("variable:alphabet.x", "may name only team 'alpha'"),  # a longer name is another team
    ],
)
def test_other_teams_and_bad_shapes_are_refused_naming_them(reference, message):
    with pytest.raises(SecretReferenceError, match=message):
        checked_references({"TOKEN": reference}, "alpha")
