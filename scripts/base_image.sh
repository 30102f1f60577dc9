#!/usr/bin/env bash
# Build the root filesystem of the serving images' local base (Debian 12 + Python 3.11), for
# machines where no public base image can be pulled: debootstrap a minimal system from the
# machine's Debian mirror, strip it, and tar it. The Docker service imports the tarball as
# asgard/python-base:bookworm (asgard.embedded.services). Idempotent: an existing tarball is kept.
# Usage: scripts/base_image.sh OUTPUT.tar   (as root: debootstrap needs it)
set -euo pipefail
output="$1"
say() { printf '==> %s\n' "$*"; }
die() { printf 'asgard base image: %s\n' "$*" >&2; exit 1; }

[ -s "$output" ] && exit 0
[ "$(id -u)" = 0 ] || die "building the base image needs root (debootstrap); run ./asgard setup as root"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"

# The mirror the machine's apt already uses (deb822 sources or a classic sources.list).
# (Either kind of file may be missing: grep's complaint is not a failure here.)
mirror="$( (cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true) \
  | grep -E '^(URIs:|deb )' | grep -v security | head -n1 \
  | sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//' | awk '{print $1}' || true)"
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*"

rootfs="$(mktemp -d /tmp/asgard-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
say "building the serving base image's root filesystem with debootstrap (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
rm -f "$rootfs.log"
# What a runtime image never needs: docs, man pages, locales, apt's lists and caches.
rm -rf "$rootfs"/usr/share/{doc,man,info,locale,lintian} "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*
mkdir -p "$(dirname "$output")"
tar -C "$rootfs" -cf "$output.partial" . && mv "$output.partial" "$output"
say "built $output ($(du -m "$output" | cut -f1) MB)"
