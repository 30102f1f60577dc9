"""Asgard MLOps: the shared package behind the DAGs (ML and data logic, hooks, operators)."""
