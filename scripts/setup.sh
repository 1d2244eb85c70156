#!/usr/bin/env bash
# Set up everything unionfs and its tests need on a Debian machine: system packages and a virtualenv in .venv.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-zstandard, -psutil, -pycurl, -certifi, -tqdm: the dependencies for Debian's python3, which runs the tests'
# commands as a user other than root (tests/support/cli.py, USER_PYTHON)
APT_PACKAGES=(fuse3 attr umoci skopeo busybox-static docker-registry fuse-overlayfs fio stress-ng buildah
              podman runc uidmap python3-venv gcc python3-dev util-linux kmod python3-zstandard python3-psutil
              python3-pycurl python3-certifi python3-tqdm debootstrap)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# docker-registry's package starts a system service we do not want (tests start their own).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi
[ -e /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }

# The virtualenv's interpreter: Debian's python3 unless $PYTHON names another. Debian's package runs pure Python
# code 1.3-1.6x faster than a Python built from source without --enable-optimizations (pyenv's default), and
# the daemon's request handling is pure Python (docs/performance.md, "The interpreter"). A .venv made from
# another interpreter is made again.
PY=${PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || PY=python3
base() { "$1" -c 'import sys; print(sys.base_prefix, sys.version)' 2>/dev/null || true; }
if [ -x .venv/bin/python ] && [ "$(base .venv/bin/python)" != "$(base "$PY")" ]; then
  echo "setup: .venv was made with another Python; making it again with $PY" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.unionfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
# mount(8) helper for `mount -t fuse.unionfs` and fstab lines.
if [ "$(id -u)" -eq 0 ] && [ -x .venv/bin/mount.fuse.unionfs ]; then
  ln -sf "$PWD/.venv/bin/mount.fuse.unionfs" /sbin/mount.fuse.unionfs
fi
