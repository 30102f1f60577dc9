"""Monitoring: drift statistics, windows of scored data, evaluation, alerts, the store and the report."""
