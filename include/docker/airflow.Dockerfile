# The production image of every Airflow component and the MLflow server: the same pinned stack
# as the embedded default (requirements.txt + constraints.txt), so the DAGs run unchanged.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 git ca-certificates bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --home-dir /opt/airflow airflow

COPY requirements.txt constraints.txt /tmp/asgard/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "$(grep -E '^uv==' /tmp/asgard/requirements.txt)" \
    && /opt/venv/bin/uv pip install --no-cache --python /opt/venv/bin/python \
       -r /tmp/asgard/requirements.txt -c /tmp/asgard/constraints.txt \
    && rm -rf /tmp/asgard

COPY --chown=airflow:airflow dags /opt/airflow/dags
COPY --chown=airflow:airflow plugins /opt/airflow/plugins
COPY --chown=airflow:airflow include /opt/airflow/include

# Every component but the Celery worker runs as the airflow user (compose sets the worker's user:
# it runs uploaded scripts in sandboxes, which are set up as root and then run as uid 65534).
USER airflow
WORKDIR /opt/airflow
