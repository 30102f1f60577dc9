"""Hooks for systems that have no Airflow provider hook of their own."""

from __future__ import annotations

from asgard.hooks.mlflow import MlflowHook

__all__ = ["MlflowHook"]
