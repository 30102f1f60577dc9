#!/usr/bin/env bash
# Set up everything the platform and its tests need on a fresh Debian machine, idempotently:
# system packages, then the project's virtualenv from the pinned requirements.
# A second run with unchanged requirements does nothing and takes a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '==> %s\n' "$*"; }
die() { printf 'asgard setup: %s\n' "$*" >&2; exit 1; }

# System packages the project uses (Debian names).
# docker-compose (v1) validates docker-compose.yaml without an engine in the tests; the Docker
# engine, a registry (distribution) and htpasswd build, hold and guard the serving images;
# debootstrap makes their base where no public image can be pulled; wrk drives the benchmarks.
APT_PACKAGES=(git docker-compose docker.io containerd runc iptables debootstrap docker-registry apache2-utils wrk)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing system packages: ${missing[*]} (run as root, or install them with apt-get)"
  say "installing system packages: ${missing[*]}"
  apt-get update -qq || die "apt-get update failed: cannot reach the Debian package mirror"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get could not install: ${missing[*]}"
fi

python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python="$(command -v "$candidate")"; break
  fi
done
if [ -z "$python" ]; then
  [ "$(id -u)" = 0 ] || die "Python 3.11 is required (Debian 12: apt-get install python3 python3-venv)"
  say "installing Python 3.11"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null \
    || die "could not install Python 3.11 with apt-get"
  python="$(command -v python3)"
fi

# The serving images' base, built once per checkout (the Docker service imports it).
bash scripts/base_image.sh .cache/python-base-bookworm.tar || die "could not build the serving base image"

# The venv is rebuilt only when a requirements file changes.
stamp_value="$(cat requirements.txt requirements-dev.txt constraints.txt | sha256sum | cut -c1-16)"
stamp_file=.venv/.asgard-requirements
if [ -x .venv/bin/python ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp_value" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  say "creating the virtualenv (.venv) with $python"
  "$python" -m venv .venv || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
fi
say "installing the pinned Python stack (first time: a few minutes)"
# The machine's pip config may point at local mirrors that do not exist: their warnings are noise.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip_quiet .venv/bin/python -m pip install -q --upgrade pip \
  || die "could not upgrade pip: is the Python package index reachable?"
pip_quiet .venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt \
  || die "pip could not install the pinned requirements (see the error above)"
pip_quiet .venv/bin/python -m pip check || die "the installed stack has conflicting requirements"
echo "$stamp_value" > "$stamp_file"
say "virtualenv ready"
