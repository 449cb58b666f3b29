#!/usr/bin/env bash
# Refresh the libsodium files the data page uses to encrypt uploads in the browser:
#   scripts/vendor-libsodium.sh 0.8.4
# Takes the npm packages libsodium and libsodium-wrappers (ISC licence) of that version, and copies their
# UMD builds (dist/modules/*.js: plain <script> files that set window.libsodium / window.sodium, with the
# asm.js fallback the hub's CSP needs) and the LICENSE into src/strongroom/web/static/vendor/libsodium/.
# csp-fallback.js there is ours: keep it. Then run tests/browser/test_archive_pages.py.
set -euo pipefail
version="${1:?usage: $0 VERSION (e.g. 0.8.4)}"
dest="$(cd "$(dirname "$0")/.." && pwd)/src/strongroom/web/static/vendor/libsodium"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "libsodium@$version" "libsodium-wrappers@$version" >/dev/null
mkdir core wrappers
tar xzf "libsodium-$version.tgz" -C core
tar xzf "libsodium-wrappers-$version.tgz" -C wrappers
cp core/package/dist/modules/libsodium.js "$dest/libsodium.js"
cp wrappers/package/dist/modules/libsodium-wrappers.js "$dest/libsodium-wrappers.js"
cp wrappers/package/LICENSE "$dest/LICENSE"
printf 'libsodium %s and libsodium-wrappers %s from the npm registry (npm pack), dist/modules builds.\n' \
  "$version" "$version" > "$dest/VERSION"
sha256sum "$dest"/libsodium.js "$dest"/libsodium-wrappers.js | sed "s|$dest/||" >> "$dest/VERSION"
cat "$dest/VERSION"
