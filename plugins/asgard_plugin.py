"""Airflow plugin: the seed's REST API (``/mlops``, ``/feast``) inside the Airflow API server."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from asgard.api import feast, mlops


class AsgardApiPlugin(AirflowPlugin):
    name = "asgard_api"
    fastapi_apps = [
        {"app": mlops.create_app(), "url_prefix": "/mlops", "name": "Asgard MLOps API"},
        {"app": feast.create_app(), "url_prefix": "/feast", "name": "Asgard Feast API"},
    ]
