#!/usr/bin/env bash
# Set up everything the platform and its tests need on a fresh Debian machine, idempotently:
# system packages, the serving images' base (debootstrap, in the background), and the project's
# virtualenv from the pinned requirements, installed by uv (pip only bootstraps uv itself).
# A second run with unchanged requirements does nothing and takes a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '==> %s\n' "$*"; }
die() { printf 'asgard setup: %s\n' "$*" >&2; exit 1; }

# System packages the project uses (Debian names).
# docker-compose (v1) validates docker-compose.yaml without an engine in the tests; the Docker
# engine, a registry (distribution) and htpasswd build, hold and guard the serving images;
# debootstrap makes their base where no public image can be pulled; wrk drives the benchmarks;
# bubblewrap and the system's python3 run uploaded scripts in sandboxes (asgard.core.sandbox).
APT_PACKAGES=(git docker-compose docker.io containerd runc iptables debootstrap docker-registry apache2-utils wrk
  bubblewrap python3 python3-seccomp)
# Options: --test-tools (./asgard test): a browser and its driver for the UI tests (selenium drives
# them); --system-services (setup, test, the production profile): the machine's PostgreSQL and Redis,
# installed and started by scripts/system_services.sh (the embedded default needs neither).
system_services=0
for option in "$@"; do
  case "$option" in
    --test-tools) APT_PACKAGES+=(chromium chromium-driver) ;;
    --system-services) system_services=1 ;;
    *) die "unknown option: $option" ;;
  esac
done

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

# The serving images' base, built once per checkout (the Docker service imports it): debootstrap
# works on the network and the disk while uv installs the stack, so the two overlap.
mkdir -p .cache
bash scripts/base_image.sh .cache/python-base-bookworm.tar >.cache/base-image.log 2>&1 &
base_image_pid=$!
# The production profile's Trino server (~555 MB from Maven Central, once per machine), alongside.
trino_pid=""
if [ "$system_services" = 1 ]; then
  bash scripts/trino_server.sh >.cache/trino-server.log 2>&1 &
  trino_pid=$!
fi
finish_base_image() {
  local status=0
  wait "$base_image_pid" || status=$?
  cat .cache/base-image.log
  [ "$status" = 0 ] || die "could not build the serving base image (see above)"
  if [ -n "$trino_pid" ]; then
    status=0
    wait "$trino_pid" || status=$?
    cat .cache/trino-server.log
    [ "$status" = 0 ] || die "could not fetch the Trino server (see above)"
  fi
  if [ "$system_services" = 1 ]; then bash scripts/system_services.sh; fi
}

# The venv is rebuilt only when a requirements file changes.
stamp_value="$(cat requirements.txt requirements-dev.txt constraints.txt | sha256sum | cut -c1-16)"
stamp_file=.venv/.asgard-requirements
if [ -x .venv/bin/python ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp_value" ]; then
  finish_base_image
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  say "creating the virtualenv (.venv) with $python"
  "$python" -m venv .venv || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
fi
# uv installs the stack (and, later, every user-script environment); pip only installs uv.
uv_pin="$(grep -E '^uv==' requirements.txt)" || die "requirements.txt pins no uv"
# The machine's pip config may point at local mirrors that do not exist: their warnings are noise.
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "${uv_pin#uv==}" ]; then
  pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check "$uv_pin" \
    || die "could not install $uv_pin with pip: is the Python package index reachable?"
fi
say "installing the pinned Python stack with uv"
# One download cache for the platform's venv and every user-script environment (asgard.core.settings:
# cache_dir): a script's requirements that the platform pins are never downloaded twice.
export UV_CACHE_DIR="$root/.cache/uv"
started=$SECONDS
.venv/bin/uv pip install --quiet --python .venv/bin/python --compile-bytecode \
  -r requirements.txt -r requirements-dev.txt -c constraints.txt \
  || die "uv could not install the pinned requirements (see the error above)"
.venv/bin/uv pip check --quiet --python .venv/bin/python || die "the installed stack has conflicting requirements"
echo "$stamp_value" > "$stamp_file"
say "virtualenv ready ($((SECONDS - started))s)"
finish_base_image
