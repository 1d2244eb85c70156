#!/usr/bin/env bash
# Set up, then show unionfs at work: build a small busybox image, list it, show its layers, save and load it,
# mount it, write through the mount, and show where the writes went.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export UNIONFS_ROOT=${UNIONFS_ROOT:-$PWD/.demo-store}
U=.venv/bin/unionfs
work=$(mktemp -d /tmp/unionfs-demo.XXXXXX)
mnt="$work/mnt"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then $U umount "$mnt" || fusermount3 -u -z "$mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# A tiny rootfs from Debian's busybox-static.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in sh ls cat echo mkdir rm mv; do ln -s busybox "$work/rootfs/bin/$a"; done
echo "demo" > "$work/rootfs/etc/hostname"
tar -C "$work/rootfs" -czf "$work/rootfs.tar.gz" .

$U rmi -f demo/busybox:1 >/dev/null 2>&1 || true
step $U import "$work/rootfs.tar.gz" demo/busybox:1 -m "demo image" -c 'CMD ["/bin/sh"]'
step $U images demo/busybox
step $U history demo/busybox:1
step $U inspect -f '{{.Id}} layers={{.RootFS}}' demo/busybox:1
step $U save demo/busybox:1 -o "$work/demo.tar"
step $U rmi demo/busybox:1
step $U load -i "$work/demo.tar"

if $U mount --help >/dev/null 2>&1; then
  mkdir -p "$mnt"
  $U rm demo >/dev/null 2>&1 || true
  step $U mount --name demo demo/busybox:1 "$mnt"
  step ls -l "$mnt" "$mnt/bin"
  step sh -c "echo 'written through the mount' > '$mnt/etc/motd'; rm '$mnt/bin/mv'; echo changed > '$mnt/etc/hostname'"
  step cat "$mnt/etc/motd" "$mnt/etc/hostname"
  step $U ps
  step $U diff demo
  step $U umount "$mnt"
  upper="$UNIONFS_ROOT/containers/demo/upper"
  step ls -lR "$upper"
  $U rmi demo/busybox:2 >/dev/null 2>&1 || true
  step $U commit -m "demo changes" demo demo/busybox:2
  step $U layers demo/busybox:2
  step $U cat demo/busybox:2 /etc/motd
  step $U rm demo
fi

if $U build --help >/dev/null 2>&1; then
  mkdir -p "$work/ctx"
  echo "hello from a build" > "$work/ctx/greeting.txt"
  cat > "$work/ctx/Dockerfile" <<'DOCKERFILE'
FROM demo/busybox:1
COPY greeting.txt /srv/
RUN echo "built at step 3" >> /srv/greeting.txt
CMD ["cat", "/srv/greeting.txt"]
DOCKERFILE
  step $U build -t demo/hello:1 "$work/ctx"
  step $U run --rm demo/hello:1
fi
echo
echo "demo finished; store at $UNIONFS_ROOT"
