#!/bin/sh
# Runs once, on the first start of the Postgres volume: MLflow gets a database of its own.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE \"${MLFLOW_DB}\""
