"""The embedded profile's Airflow metadata database (SQLite): how its connections wait for a lock.

Airflow imports ``CONNECT_ARGS`` through ``[database] sql_alchemy_connect_args`` before anything else of
the platform, so this module imports nothing.
"""

# SQLite's default is to give up on a locked database after 5 s. On two busy cores (image builds, load
# tests) another component's write can hold the lock longer, and a scheduler that gives up exits.
CONNECT_ARGS = {"timeout": 60}
