"""Asgard model server: the app baked into every serving image (no Airflow inside)."""
