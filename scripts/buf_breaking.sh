#!/usr/bin/env bash
# Check proto/ for breaking changes (buf's FILE rules) against main's previous state:
# the last commit when proto/ has uncommitted changes, else the commit before it.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
buf=node_modules/.bin/buf

if [ -n "$(git status --porcelain -- proto)" ]; then
  ref=HEAD
else
  ref=HEAD~1
fi
if ! git rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then
  echo "buf breaking: no $ref to compare with (first commit or shallow clone); skipped"
  exit 0
fi
if [ -z "$(git ls-tree -r --name-only "$ref" -- proto)" ]; then
  echo "buf breaking: $ref has no proto/; nothing to compare with"
  exit 0
fi
"$buf" breaking --against ".git#ref=$(git rev-parse "$ref"),subdir=." 
echo "buf breaking: no breaking change against $ref"
