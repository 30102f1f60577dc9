"""Deployment: verified rollouts with rollback on the Docker and Kubernetes targets, and the route table."""
