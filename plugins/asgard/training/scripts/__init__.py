"""Users' training scripts: checked, run in isolation (locally or as a pod), their model registered."""
