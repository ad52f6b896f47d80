#!/usr/bin/env bash
# Build a minimal Debian root filesystem for a foreign architecture with debootstrap, once.
#
#   make-root.sh ROOT SUITE DEB_ARCH MIRROR [PACKAGES]
#   e.g. make-root.sh /var/cache/edgeship/arm64-bookworm/root bookworm arm64 \
#        http://MIRROR/debian python3
#
# A complete root carries the marker file ROOT/.edgeship-root-complete, written last; a root
# without it (an interrupted run) is removed and built again. The build happens in ROOT.partial
# and is renamed into place, so ROOT is never half-made under its own name. Needs root, and
# qemu user-mode emulation for DEB_ARCH enabled in binfmt_misc (host-setup.sh).
set -euo pipefail

if [ "$#" -lt 4 ]; then
  echo "usage: $0 ROOT SUITE DEB_ARCH MIRROR [PACKAGES]" >&2
  exit 2
fi
ROOT="$1" SUITE="$2" DEB_ARCH="$3" MIRROR="$4" INCLUDE="${5:-python3}"
MARKER=".edgeship-root-complete"
WANT="suite=$SUITE arch=$DEB_ARCH include=$INCLUDE"

# Refuse to delete a folder something is still mounted under (a /dev bind mount, say).
remove_tree() {
  local dir="$1"
  [ -e "$dir" ] || return 0
  if awk -v d="$(realpath "$dir")" '$5 == d || index($5, d "/") == 1 { found = 1 } END { exit !found }' \
      /proc/self/mountinfo; then
    echo "make-root: $dir has mounts under it; unmount them first" >&2
    exit 6
  fi
  rm -rf --one-file-system "$dir"
}

if [ -f "$ROOT/$MARKER" ] && grep -qxF "$WANT" "$ROOT/$MARKER"; then
  echo "make-root: $ROOT is complete ($WANT)"
  exit 0
fi

remove_tree "$ROOT"
remove_tree "$ROOT.partial"
mkdir -p "$(dirname "$ROOT")"
echo "make-root: debootstrap $SUITE $DEB_ARCH from $MIRROR into $ROOT"
if ! debootstrap --arch="$DEB_ARCH" --variant=minbase --include="$INCLUDE" \
    "$SUITE" "$ROOT.partial" "$MIRROR" >"$ROOT.partial.log" 2>&1; then
  echo "make-root: debootstrap failed; last lines of $ROOT.partial.log:" >&2
  tail -n 20 "$ROOT.partial.log" >&2
  exit 7
fi
# debootstrap leaves the package cache behind: ~30 MB nobody needs.
rm -rf "$ROOT.partial/var/cache/apt/archives/"*.deb
mv "$ROOT.partial" "$ROOT"
rm -f "$ROOT.partial.log"
echo "$WANT" >"$ROOT/$MARKER"
echo "make-root: $ROOT ready"
