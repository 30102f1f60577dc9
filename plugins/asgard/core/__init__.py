"""The floor everything stands on: settings, errors, Param schemas, DAG defaults, storage, build cache.

Nothing here imports any other part of ``asgard``.
"""
