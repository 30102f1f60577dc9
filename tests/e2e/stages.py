"""The main job's stage lines, the same on every profile (after the first, which names the profile), and
the way the end-to-end tests run ./asgard."""

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PIPELINE_STAGES = (
    "check the platform",
    "generate the sample gold layer",
    "apply the feature repo",
    "register features",
    "materialize features",
    "train three frameworks; the gate picks the champion (train_model)",
    "new features retrain the champion (materialize_features -> retrain_model)",
    "upload a script, follow it to serving (./asgard upload)",
    "build, push and deploy the champion",
    "score a batch (score_batch)",
    "monitor a normal and a drifted window (monitor_model)",
    "a person approves the drift retrain's deploy (deploy_model approve_deployment)",
)


def asgard(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``./asgard ARGS`` from the checkout; a run that outlives its timeout fails the test with the stage it
    was in (the end of what it printed), not with a bare TimeoutExpired."""
    try:
        return subprocess.run(
            [str(REPO / "asgard"), *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        printed = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout or ""
        stages = [line for line in printed.splitlines() if line.startswith("==> ")]
        pytest.fail(
            f"./asgard {' '.join(args)} ran past {timeout:.0f} s; last stage {stages[-1] if stages else 'none'!r}; "
            f"it printed last:\n{printed[-3000:]}",
            pytrace=False,
        )
