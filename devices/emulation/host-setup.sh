#!/usr/bin/env bash
# Make this x86-64 Linux host able to run aarch64 programs: qemu user-mode emulation registered
# with binfmt_misc (fix-binary flag, so programs in a chroot run without copying qemu in).
#
# Idempotent; run it before every emulated session, because binfmt_misc registration does not
# survive a new machine (and, in containers, is often not even mounted).
#
# Exit codes: 0 ready; 3 not root; 4 a package could not be installed; 5 binfmt_misc could not be
# mounted or qemu-aarch64 could not be enabled.
set -euo pipefail

ARCH="${1:-aarch64}"
BINFMT=/proc/sys/fs/binfmt_misc

if [ "$(id -u)" != "0" ]; then
  echo "host-setup: must run as root (apt-get, mount, update-binfmts)" >&2
  exit 3
fi

missing=()
command -v qemu-"$ARCH"-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || missing+=(binfmt-support)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "host-setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq "${missing[@]}" >/dev/null || {
      echo "host-setup: apt-get install ${missing[*]} failed" >&2
      exit 4
    }
  fi
fi

if [ ! -e "$BINFMT/register" ]; then
  mount -t binfmt_misc binfmt_misc "$BINFMT" || {
    echo "host-setup: cannot mount binfmt_misc on $BINFMT" >&2
    exit 5
  }
fi
update-binfmts --enable "qemu-$ARCH" >/dev/null 2>&1 || true
if ! grep -qx enabled "$BINFMT/qemu-$ARCH" 2>/dev/null; then
  echo "host-setup: qemu-$ARCH is not enabled in $BINFMT" >&2
  exit 5
fi
if ! grep -q '^flags:.*F' "$BINFMT/qemu-$ARCH"; then
  echo "host-setup: qemu-$ARCH is registered without the F (fix-binary) flag" >&2
  exit 5
fi
echo "host-setup: qemu-$ARCH enabled ($(command -v qemu-"$ARCH"-static))"
