#!/bin/bash
# Builds OUT (default build/viewer-mirror): offline copies of the scripts circuit-tracer 0.5.0's viewer
# (frontend/assets/index.html) loads from transformer-circuits.pub and unpkg.com, laid out under the same
# URL paths, from npm packages only. tests/test_viewer.py serves OUT over local HTTPS and maps those two
# hosts to it in headless Chromium, so the package's own, unmodified index.html runs offline.
#   2025/attribution-graphs/static_js/lib/d3.js  = d3@7.9.0 + jetpack-pre.js + d3-jetpack@2.1.0 + jetpack-post.js
#   …/jetpack_2024-07-20.js, npy_v0.js, hotserver-client-ws.js = empty (all in d3.js / unused by the graph page)
#   dagre@0.8.5/dist/dagre.min.js, pako@2.1.0/dist/pako.min.js = the npm files
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-build/viewer-mirror}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for p in d3@7.9.0 d3-jetpack@2.1.0 dagre@0.8.5 pako@2.1.0; do
  npm pack --silent "$p" >/dev/null
done
for t in *.tgz; do mkdir -p "${t%.tgz}" && tar xzf "$t" -C "${t%.tgz}"; done
lib=mirror/2025/attribution-graphs/static_js/lib
mkdir -p "$lib" mirror/dagre@0.8.5/dist mirror/pako@2.1.0/dist
{ cat d3-7.9.0/package/dist/d3.min.js; printf '\n;\n'; cat "$here/jetpack-pre.js"; printf '\n;\n'
  cat d3-jetpack-2.1.0/package/build/d3-jetpack.js; printf '\n;\n'; cat "$here/jetpack-post.js"; } > "$lib/d3.js"
for f in jetpack_2024-07-20.js npy_v0.js hotserver-client-ws.js; do echo "// offline stub (see d3.js)" > "$lib/$f"; done
cp dagre-0.8.5/package/dist/dagre.min.js mirror/dagre@0.8.5/dist/
cp pako-2.1.0/package/dist/pako.min.js mirror/pako@2.1.0/dist/
rm -rf "$out" && mkdir -p "$(dirname "$out")" && mv mirror "$out"
echo "viewer mirror in $out"
