"""The model registry (MLflow): the model-version contract, registration, the champion gate, metrics."""
