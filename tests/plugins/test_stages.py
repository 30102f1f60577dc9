"""The main job's stage clock: a failure names its stage and its cause; every stage is timed."""

from __future__ import annotations

import pytest

from asgard.hooks.airflow_api import AirflowApiError
from asgard.local.stages import MainJobError, StageClock


def test_a_failure_names_the_stage_and_a_foreign_error_by_its_type(capsys):
    clock = StageClock()
    with clock.stage("train"):
        pass
    foreign = r"^stage 'read the decision' failed: KeyError: 'score'$"
    with pytest.raises(MainJobError, match=foreign), clock.stage("read the decision"):
        {}["score"]
    ours = r"^stage 'wait' failed: run train_model/r1 still running after 9s$"
    with pytest.raises(MainJobError, match=ours), clock.stage("wait"):
        raise AirflowApiError("run train_model/r1 still running after 9s")
    assert [name for name, _ in clock.timings] == ["train", "read the decision", "wait"]
    out = capsys.readouterr().out
    assert out.count("==> ") == 3 and out.count("done in") == 1  # only the stage that ended well is done
