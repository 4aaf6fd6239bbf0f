#!/usr/bin/env bash
#
# Builds the hakube binary (a release build of this tree, installing the
# Debian packages the build needs when they are missing: protoc and its
# includes) and prints its path as the only line on stdout:
#
#   HAKUBE=$(scripts/build.sh)
#   "$HAKUBE" bundle create --from "$(scripts/kube-bundle.sh)" --out hakube.tar
#
# HAKUBE_BIN set: that binary is printed instead, unbuilt.
set -euo pipefail
prog=build.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
if [[ -z ${HAKUBE_BIN:-} ]]; then
  hakube_ensure_needs protoc protoc-includes || die "could not install what the build needs"
fi
hakube_binary "$repo" || die "no hakube binary: see the messages above"
