#!/bin/sh
# Build the lab's application repository from this project's app/ directory: a git bundle
# with three tagged versions (same code, different release notes), the stand-in for the
# operators' git remote. Usage: make-bundle.sh <project dir> <output bundle>
set -eu
project=$1
out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/repo"
(cd "$project/app" && tar --exclude=./node_modules --exclude=./.env --exclude=./ecosystem.config.js -cf - .) \
  | tar -C "$work/repo" -xf -
cd "$work/repo"
git="git -c user.name=aiadmin-lab -c user.email=lab@aiadmin.invalid -c init.defaultBranch=main"
$git init -q .
for version in v1.0.0 v1.1.0 v1.2.0; do
  echo "$version" > RELEASE
  $git add -A
  $git commit -q -m "release $version"
  $git tag "$version"
done
$git bundle create "$out.tmp" --all 2>/dev/null
mv "$out.tmp" "$out"
