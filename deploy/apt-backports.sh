#!/bin/sh
# Adds bookworm-backports beside the Debian source apt already has (same mirror, same key), once.
# Used by .ci/run and deploy/Dockerfile.webgpu: Dawn needs Mesa 25, which bookworm has only there.
set -eu
if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then exit 0; fi
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  awk 'BEGIN { RS = ""; ORS = "\n" } /Suites:[^\n]*bookworm( |\n|$)/ { sub(/Suites:[^\n]*/, "Suites: bookworm-backports"); print; exit }' \
    /etc/apt/sources.list.d/debian.sources >/etc/apt/sources.list.d/bookworm-backports.sources
elif [ -f /etc/apt/sources.list ]; then
  awk '$1 == "deb" && $3 == "bookworm" { $3 = "bookworm-backports"; print; exit }' /etc/apt/sources.list \
    >/etc/apt/sources.list.d/bookworm-backports.list
fi
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list.d/; then
  echo "apt-backports.sh: apt has no Debian bookworm source to add bookworm-backports beside; add one (see docs/gpu.md)" >&2
  exit 1
fi
