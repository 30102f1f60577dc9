"""Airflow local settings (Airflow imports this module from the plugins folder in every process).

Only one thing is set here: the processes that fork task processes import the heavy ML libraries
once, so no task pays for them again (see ``asgard.core.preload``).
"""

from __future__ import annotations

from asgard.core.preload import warm_if_forking_tasks

warm_if_forking_tasks()
