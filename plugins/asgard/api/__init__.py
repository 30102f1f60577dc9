"""The seed platform's REST API (``/mlops``, ``/feast``), served inside the Airflow API server.

``plugins/asgard_plugin.py`` mounts the two apps. They hold no logic of their own: requests become
DAG runs through Airflow's REST API (with the caller's own token, so Airflow authorizes them and
the DAGs' Params validate them), and queries go to the same registry, Feast and monitoring
functions the DAGs use.
"""
