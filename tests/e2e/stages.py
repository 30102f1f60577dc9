"""The main job's stage lines, the same on every profile (after the first, which names the profile)."""

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
