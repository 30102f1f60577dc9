"""Hooks for systems that have no Airflow provider hook of their own: MLflow, the Airflow REST API,
the Docker engine and OCI registries (logins through the docker and amazon providers' hooks)."""
