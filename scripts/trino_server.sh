#!/usr/bin/env bash
# Fetch the Trino server the production profile runs, by its Maven coordinates, into a folder that
# every checkout on the machine shares (asgard.local.trino: <ASGARD_MACHINE_DIR>/trino/<version>):
# the slim server io.trino:trino-server-core:476:tar.gz and the two connectors the platform configures,
# io.trino:trino-iceberg:476:zip and io.trino:trino-memory:476:zip, unpacked into plugin/iceberg and
# plugin/memory. Each download is checked against the SHA-1 pinned here (what Maven Central published),
# so a mirror (ASGARD_MAVEN_REPOSITORY) cannot hand over something else. Idempotent: an existing server
# is kept; two fetches at once take turns (flock). 476 runs on Java >= 24 (Temurin 25 here): the
# service finds one under /usr/lib/jvm (asgard.local.trino).
# Usage: scripts/trino_server.sh [OUTPUT_DIR]   (default: the machine's folder, or where this user
# cannot write there, the checkout's .cache: asgard.local.trino.server_dir says the same)
set -euo pipefail
version=476
machine_dir="${ASGARD_MACHINE_DIR:-/var/lib/asgard}"
if [ -n "${1:-}" ]; then output="$1"
elif [ -d "$machine_dir/trino/$version" ] || [ -w "$machine_dir" ] \
  || { [ ! -e "$machine_dir" ] && [ -w "$(dirname "$machine_dir")" ]; }; then output="$machine_dir/trino/$version"
else output="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/trino/$version"
fi
repository="${ASGARD_MAVEN_REPOSITORY:-https://repo1.maven.org/maven2}"
say() { printf '==> %s\n' "$*"; }
die() { printf 'asgard trino: %s\n' "$*" >&2; exit 1; }

installed() { [ -x "$output/bin/launcher" ] && [ -d "$output/plugin/iceberg" ] && [ -d "$output/plugin/memory" ]; }
installed && exit 0
mkdir -p "$(dirname "$output")" || die "cannot create $(dirname "$output")"
exec 9>"$output.lock"
flock 9
installed && exit 0  # another fetch finished while this one waited

# artifact path (group io.trino) and its SHA-1 on Maven Central
artifacts=(
  "trino-server-core/$version/trino-server-core-$version.tar.gz 6bae2db438f8e6a2a8d9c8b566bb5e5b05870138"
  "trino-iceberg/$version/trino-iceberg-$version.zip 6a9841be7b21c71110a1efc3a98e5dd833b20a8e"
  "trino-memory/$version/trino-memory-$version.zip ed0e99bd6eb31739867bb8da1d16aeb8ca7a83c1"
)
staging="$(mktemp -d "$output.partial.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
started=$SECONDS
say "fetching Trino $version from $repository (about 555 MB)"
for entry in "${artifacts[@]}"; do
  read -r path sha1 <<<"$entry"
  file="$staging/$(basename "$path")"
  curl -fsSL --retry 3 --connect-timeout 20 -o "$file" "$repository/io/trino/$path" \
    || die "could not download io.trino:$path from $repository"
  echo "$sha1  $file" | sha1sum --quiet -c - >/dev/null 2>&1 || die "$(basename "$path"): SHA-1 is not $sha1"
done
mkdir "$staging/server"
tar -C "$staging/server" --strip-components=1 -xzf "$staging/trino-server-core-$version.tar.gz"
for plugin in iceberg memory; do
  python3 -m zipfile -e "$staging/trino-$plugin-$version.zip" "$staging/plugins"
  mv "$staging/plugins/trino-$plugin-$version" "$staging/server/plugin/$plugin"
done
rm -rf "$output"
mv "$staging/server" "$output"
say "Trino $version ready in $output ($((SECONDS - started))s, $(du -sm "$output" | cut -f1) MB)"
