#!/usr/bin/env bash
# The machine's PostgreSQL and Redis, which the production profile and its tests use: installed from
# Debian's packages when missing, started on loopback when not running, idempotently. A server named
# by ASGARD_POSTGRES_ADMIN_URL / ASGARD_REDIS_URL (a managed service, another host) is used as it is
# and never touched here. The embedded default needs neither.
#
# PostgreSQL: Debian's cluster asks TCP logins for a password (scram-sha-256) and its `postgres` role
# has none, so the set-up makes an admin login of its own (role asgard_admin, a generated password)
# through the cluster's local peer login, and keeps its URL 0600 in the machine's Asgard folder
# (ASGARD_MACHINE_DIR, default /var/lib/asgard), where every checkout on the machine finds it
# (asgard.core.settings reads it as the default ASGARD_POSTGRES_ADMIN_URL).
# Usage: scripts/system_services.sh   (as root when something has to be installed or started)
set -euo pipefail
say() { printf '==> %s\n' "$*"; }
die() { printf 'asgard setup: %s\n' "$*" >&2; exit 1; }

machine_dir="${ASGARD_MACHINE_DIR:-/var/lib/asgard}"
admin_url_file="$machine_dir/postgres-admin-url"
admin_role=asgard_admin

answers() { # host port: something accepts TCP connections there
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

install_packages() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "missing system packages: ${missing[*]} (run as root, or install them with apt-get)"
  say "installing system packages: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed: cannot reach the Debian package mirror"
  # policy-rc.d 101: the packages' own scripts start nothing (no init system here); this script does.
  local policy=/usr/sbin/policy-rc.d had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { [ "$had_policy" = 1 ] || rm -f "$policy"; die "apt-get could not install: ${missing[*]}"; }
  [ "$had_policy" = 1 ] || rm -f "$policy"
}

# ----------------------------------------------------------------------------- PostgreSQL
postgres_admin_works() {
  [ -s "$admin_url_file" ] || return 1
  PGCONNECT_TIMEOUT=5 psql "$(cat "$admin_url_file")" -Atqc 'SELECT 1' >/dev/null 2>&1
}

setup_postgres() {
  if [ -n "${ASGARD_POSTGRES_ADMIN_URL:-}" ]; then
    say "PostgreSQL: using ASGARD_POSTGRES_ADMIN_URL as it is"
    return 0
  fi
  if answers 127.0.0.1 5432 && postgres_admin_works; then
    say "PostgreSQL: running on 127.0.0.1:5432"
    return 0
  fi
  install_packages postgresql
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not running and starting it needs root"
  local version
  version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
  [ -n "$version" ] || die "the postgresql package installed no server under /usr/lib/postgresql"
  if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
    say "PostgreSQL: creating cluster $version/main"
    pg_createcluster "$version" main >/dev/null || die "pg_createcluster $version main failed"
  fi
  local port
  port="$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')"
  [ "$port" = 5432 ] || die "PostgreSQL cluster $version/main listens on $port, not 5432: set ASGARD_POSTGRES_ADMIN_URL"
  if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    if answers 127.0.0.1 5432; then
      die "port 5432 on 127.0.0.1 is taken by a server that is not cluster $version/main: set ASGARD_POSTGRES_ADMIN_URL"
    fi
    say "PostgreSQL: starting cluster $version/main on 127.0.0.1:5432"
    # listen_addresses: loopback only, whatever the cluster's own configuration says.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start -- -o "-c listen_addresses=127.0.0.1" \
      || die "PostgreSQL did not start (see /var/log/postgresql/postgresql-$version-main.log)"
  fi
  postgres_admin_works && return 0
  # The admin login: made (or its password set again) through the cluster's local peer login.
  local password url
  password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32)"
  url="postgresql://$admin_role:$password@127.0.0.1:5432/postgres"
  runuser -u postgres -- psql -v ON_ERROR_STOP=1 -Atq -v role="$admin_role" -v password="$password" >/dev/null <<'SQL' \
    || die "could not create PostgreSQL's admin login $admin_role"
SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN SUPERUSER PASSWORD %L', :'role', :'password') \gexec
SQL
  install -d -m 0700 "$machine_dir"
  (umask 077 && printf '%s\n' "$url" >"$admin_url_file.partial" && mv "$admin_url_file.partial" "$admin_url_file")
  postgres_admin_works || die "PostgreSQL's admin login $admin_role does not work over TCP on 127.0.0.1:5432"
  say "PostgreSQL: admin login $admin_role kept in $admin_url_file"
}

# ----------------------------------------------------------------------------- Redis
setup_redis() {
  if [ -n "${ASGARD_REDIS_URL:-}" ]; then
    say "Redis: using ASGARD_REDIS_URL as it is"
    return 0
  fi
  if answers 127.0.0.1 6379; then
    say "Redis: running on 127.0.0.1:6379"
    return 0
  fi
  install_packages redis-server
  [ "$(id -u)" = 0 ] || die "Redis is not running and starting it needs root"
  say "Redis: starting on 127.0.0.1:6379"
  install -d -o redis -g redis -m 0750 /var/log/redis /run/redis
  # As Debian's redis user; no persistence: the profile's broker and online store are rebuilt by their owners.
  runuser -u redis -- redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --protected-mode yes --save "" --appendonly no \
    --pidfile /run/redis/redis-server.pid --logfile /var/log/redis/redis-server.log \
    || die "redis-server did not start (see /var/log/redis/redis-server.log)"
  local waited=0
  until answers 127.0.0.1 6379; do
    [ "$waited" -lt 20 ] || die "Redis did not answer on 127.0.0.1:6379 within 10 s"
    sleep 0.5; waited=$((waited + 1))
  done
}

setup_postgres
setup_redis
