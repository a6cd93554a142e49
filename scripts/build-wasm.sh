#!/usr/bin/env bash
# Builds the browser package client-wasm/pkg (package.json, JavaScript, TypeScript types,
# .wasm) with the wasm-bindgen CLI pinned to the version of the wasm-bindgen crate.
# A release build is then shrunk with wasm-opt from the npm package binaryen (pinned; a
# distribution's older binaryen can produce modules that break in browsers).
# Usage: scripts/build-wasm.sh [--dev] [--no-opt]
set -euo pipefail
cd "$(dirname "$0")/.."

binaryen=binaryen@132
profile=release
optimize=1
for arg in "$@"; do
  case "$arg" in
    --dev) profile=debug optimize=0 ;;
    --no-opt) optimize=0 ;;
    *) echo "usage: $0 [--dev] [--no-opt]" >&2; exit 2 ;;
  esac
done

# The CLI must match the crate exactly; read the version from Cargo.lock.
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
[ -n "$version" ] || { echo "wasm-bindgen not found in Cargo.lock" >&2; exit 1; }

rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  echo "installing wasm-bindgen-cli $version"
  # --locked first; if a dependency pinned in its lock file is no longer published,
  # resolve afresh (still the exact CLI version).
  cargo install wasm-bindgen-cli --version "$version" --locked \
    || cargo install wasm-bindgen-cli --version "$version"
fi

# Config rustflags (.cargo/config.toml) carry the cfgs web-sys and getrandom need; an
# environment RUSTFLAGS would replace them.
unset RUSTFLAGS
# Size over speed for the browser; set here so that native release builds are unaffected.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_DEBUG=0
if [ "$profile" = release ]; then
  cargo build -p rtgate-client --lib --target wasm32-unknown-unknown --release --locked
else
  cargo build -p rtgate-client --lib --target wasm32-unknown-unknown --locked
fi

out=client-wasm/pkg
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" --out-name rtgate_client \
  "target/wasm32-unknown-unknown/$profile/rtgate_client.wasm"

crate_version=$(awk -F'"' '/^version = / { print $2; exit }' Cargo.toml)
cat >"$out/package.json" <<JSON
{
  "name": "rtgate-client",
  "version": "$crate_version",
  "description": "rtgate browser client: WebTransport with WebSocket fallback, resumable rooms",
  "license": "Apache-2.0",
  "type": "module",
  "main": "rtgate_client.js",
  "module": "rtgate_client.js",
  "types": "rtgate_client.d.ts",
  "files": ["README.md", "rtgate_client.js", "rtgate_client.d.ts", "rtgate_client_bg.wasm", "rtgate_client_bg.wasm.d.ts"],
  "sideEffects": false
}
JSON

cp client-wasm/README.md "$out/README.md"

if [ "$optimize" = 1 ] && ! command -v npx >/dev/null; then
  echo "npx (npm) not found: skipping wasm-opt; the package works, only larger" >&2
  optimize=0
fi
if [ "$optimize" = 1 ]; then
  # The features rustc enables by default for wasm32-unknown-unknown.
  npx --yes --package "$binaryen" -- wasm-opt -Oz \
    --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-reference-types --enable-mutable-globals --enable-multivalue \
    "$out/rtgate_client_bg.wasm" -o "$out/rtgate_client_bg.wasm"
fi

# Build output, like target/: never committed.
echo "*" >"$out/.gitignore"

wasm="$out/rtgate_client_bg.wasm"
echo "built $out: $(wc -c <"$wasm") bytes wasm, $(gzip -9c "$wasm" | wc -c) gzipped"
