"""A model's own requirements.txt is the model's, so whoever logged it: its lines are installed only as
plain pins from the index, held to the ``requirements`` Param's own rule."""

from __future__ import annotations

import pytest

from asgard.core.errors import InputError
from asgard.serving.image import model_requirements


@pytest.mark.parametrize(
    "line",
    [
        "evil @ https://example.invalid/evil-1.0-py3-none-any.whl",
        "git+https://example.invalid/evil.git",
        "--index-url https://example.invalid/simple",
        "--extra-index-url=https://example.invalid/simple",
        "-e .",
        "-r other.txt",
        "./evil-1.0.tar.gz",
        "/tmp/evil.whl",
        "evil; os_name == 'posix'",
        "x" * 201,
    ],
)
def test_a_model_requirement_that_is_no_plain_pin_is_refused_naming_it(tmp_path, line):
    (tmp_path / "requirements.txt").write_text(f"scikit-learn==1.9.1\n{line}\n")
    with pytest.raises(InputError, match=r"the model's requirements\.txt has a line that is not a plain requirement"):
        model_requirements(tmp_path)


def test_plain_pins_pass_without_mlflow_comments_or_blank_lines(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "# logged by MLflow\nmlflow==3.17.2\n\ncloudpickle==3.1.1  # the serializer\nscikit-learn[extra]>=1.9,<2\n"
    )
    assert model_requirements(tmp_path) == ["cloudpickle==3.1.1", "scikit-learn[extra]>=1.9,<2"]


@pytest.mark.parametrize(
    "recorded",
    ['["scikit-learn", "evil @ https://example.invalid/evil-1.0.tar.gz"]', '"scikit-learn"', "not json"],
)
def test_a_script_versions_recorded_requirements_are_held_to_the_same_rule(tmp_path, recorded):
    """The sandboxed scoring of a script's version rebuilds its environment from a tag, which whoever may tag
    the version can write: a URL in it is refused before uv sees it."""
    from types import SimpleNamespace

    from asgard.registry.versions import SCRIPT_REQUIREMENTS_TAG
    from asgard.training.evaluation import _requirements

    version = SimpleNamespace(name="churn", version="3", tags={SCRIPT_REQUIREMENTS_TAG: recorded})
    with pytest.raises(InputError, match=rf"churn v3's {SCRIPT_REQUIREMENTS_TAG} tag"):
        _requirements(version, tmp_path)
    version.tags[SCRIPT_REQUIREMENTS_TAG] = '["scikit-learn==1.9.1", "pandas"]'
    assert _requirements(version, tmp_path) == ["scikit-learn==1.9.1", "pandas"]
