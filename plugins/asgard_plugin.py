"""Airflow plugin: the seed's REST API (``/mlops``, ``/feast``) inside the Airflow API server, and the
Models page (served by ``/mlops``) in the Airflow UI's navigation."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from asgard.api import feast, mlops
from asgard.api.run_guard import RunGuard


class AsgardApiPlugin(AirflowPlugin):
    name = "asgard_api"
    fastapi_apps = [
        {"app": mlops.create_app(), "url_prefix": "/mlops", "name": "Asgard MLOps API"},
        {"app": feast.create_app(), "url_prefix": "/feast", "name": "Asgard Feast API"},
    ]
    # In front of the whole API server: runs of the model DAGs are changed (cleared, marked, deleted, their
    # XComs edited) in Airflow's own UI and REST API only by their model's team and admins.
    fastapi_root_middlewares = [{"middleware": RunGuard, "args": [], "kwargs": {}, "name": "asgard_run_guard"}]
    # Shown inside the UI (an iframe at /plugin/models), behind Airflow's login: the page reads the
    # UI's session cookie like every /mlops route.
    external_views = [
        {
            "name": "Models",
            "href": "/mlops/ui/models",
            "url_route": "models",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
