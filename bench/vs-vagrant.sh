#!/usr/bin/env bash
# box against Vagrant + vagrant-libvirt on the same guest image (the reference box, which
# vagrant-libvirt boots as it is: see test/e2e/vagrant-interop.test.ts). Paired runs, box (A)
# then Vagrant (B) in each pair, each from a fresh store: `box add` / `vagrant box add`,
# up from nothing to ssh, `ssh -c true`, status, halt, second up, halt, package, destroy.
# Prints each pair's seconds and ratio (box/Vagrant) and the medians, with the load average.
#
#   bench/vs-vagrant.sh [PAIRS] [BOX_FILE]      # PAIRS ≥ 3 (default 3); BOX_FILE: this
#                                               # tree's reference box (built if missing)
#
# Root only (libvirtd runs in its own network namespace: scripts/libvirt-netns, stopped at
# the end by its pid files if this script started it). Both sides get the same CPU under
# TCG (TCG_CPU of src/providers/qemu/accel.ts) and 1 GiB / 2 vCPUs. Each pair holds the QEMU
# lock (BENCH_LOCK, default /tmp/box-qemu.lock) so no other guest runs during it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pairs=${1:-3}
lock=${BENCH_LOCK:-/tmp/box-qemu.lock}
netns="$here/scripts/libvirt-netns"
[ "$pairs" -ge 3 ] 2>/dev/null || { echo "vs-vagrant: PAIRS must be a number ≥ 3" >&2; exit 2; }
box_file=${2:-}
# The reference box of this tree's recipe and builder (the test cache holds other trees' too);
# built when missing, so called with the QEMU lock held.
reference_box() {
  (cd "$here" && node --import tsx/esm --input-type=module -e "
    import {ensureBox} from './src/builder/index.ts'
    import {testCacheDir} from './test/support/cache.ts'
    console.log((await ensureBox('boxes/debian-bookworm', {cacheDir: testCacheDir()})).path)")
}
cpu=$(sed -n "s/^export const TCG_CPU = '\(.*\)'$/\1/p" "$here/src/providers/qemu/accel.ts")
[ -n "$cpu" ] || { echo "vs-vagrant: TCG_CPU not found in src/providers/qemu/accel.ts" >&2; exit 2; }

work=$(mktemp -d /tmp/vs-vagrant.XXXXXX)
started_libvirt=no
cleanup() {
  set +e
  (cd "$work/vagrant" 2>/dev/null && VAGRANT_HOME="$work/vagrant-home" "$netns" exec vagrant destroy -f >/dev/null 2>&1)
  (cd "$work/box" 2>/dev/null && BOX_DATA_DIR="$work/box-data" "$here/bin/box" destroy -f >/dev/null 2>&1)
  delete_pool_image
  [ "$started_libvirt" = yes ] && "$netns" stop >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# vagrant-libvirt's package runs virt-sysprep and virt-sparsify (libguestfs-tools, which
# boot an appliance VM) and dies without them. Where they are missing, stand-ins that do
# nothing: Vagrant's package is then a copy of the disk without its backing chain, tarred,
# as box's is (neither cleans the guest); the summary says so.
package_note="vagrant package with virt-sysprep and virt-sparsify"
if ! command -v virt-sysprep >/dev/null || ! command -v virt-sparsify >/dev/null; then
  mkdir -p "$work/no-libguestfs"
  for tool in virt-sysprep virt-sparsify; do printf '#!/bin/sh\nexit 0\n' > "$work/no-libguestfs/$tool"; done
  chmod +x "$work/no-libguestfs"/*
  package_note="vagrant package without virt-sysprep and virt-sparsify (libguestfs-tools not installed: stand-ins that do nothing)"
fi
if ! "$netns" status; then "$netns" start >/dev/null; started_libvirt=yes; fi

# vagrant-libvirt uploads a box's image into libvirt's pool once per box: delete it, so
# every Vagrant "up from nothing" uploads as the first one does (box's up makes its clone).
delete_pool_image() {
  local volume
  for volume in $("$netns" exec virsh -q vol-list default 2>/dev/null | awk '$1 ~ /^vs-vagrant_vagrant_box_image/ {print $1}'); do
    "$netns" exec virsh -q vol-delete --pool default "$volume" >/dev/null
  done
}

# timed SIDE PAIR OP COMMAND…: run COMMAND quietly (its output goes to SIDE.log) and append
# "SIDE PAIR OP SECONDS" to the figures.
timed() {
  local side=$1 pair=$2 op=$3 start end
  shift 3
  start=$(date +%s.%N)
  if ! "$@" >>"$work/$side.log" 2>&1; then
    echo "vs-vagrant: $side $op failed (pair $pair):" >&2
    grep -v $'^\tfrom ' "$work/$side.log" | tail -40 >&2
    exit 1
  fi
  end=$(date +%s.%N)
  echo "$side $pair $op $(echo "$end - $start" | bc)" >> "$work/figures"
}

box_pair() {
  local pair=$1
  export BOX_DATA_DIR="$work/box-data" BOX_CACHE_DIR="${BOX_CACHE_DIR:-$HOME/.cache/box}" NO_COLOR=1
  rm -rf "$work/box" "$BOX_DATA_DIR"
  mkdir -p "$work/box"
  printf 'box: vs-vagrant\nmemory: 1024\ncpus: 2\n' > "$work/box/Boxfile"
  cd "$work/box"
  timed box "$pair" add "$here/bin/box" add vs-vagrant "$box_file"
  timed box "$pair" up "$here/bin/box" up
  timed box "$pair" ssh "$here/bin/box" ssh -c true
  timed box "$pair" status "$here/bin/box" status
  timed box "$pair" halt "$here/bin/box" halt
  timed box "$pair" up2 "$here/bin/box" up
  "$here/bin/box" halt >>"$work/box.log" 2>&1
  timed box "$pair" package "$here/bin/box" package --output "$work/box-packaged.box" --force
  timed box "$pair" destroy "$here/bin/box" destroy -f
  rm -f "$work/box-packaged.box"
  cd "$work"
}

vagrant_pair() {
  local pair=$1
  export VAGRANT_HOME="$work/vagrant-home" VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
  rm -rf "$work/vagrant" "$VAGRANT_HOME"
  mkdir -p "$work/vagrant"
  delete_pool_image
  "$netns" vagrantfile vs-vagrant "$cpu" > "$work/vagrant/Vagrantfile"
  cd "$work/vagrant"
  timed vagrant "$pair" add "$netns" exec vagrant box add --name vs-vagrant "$box_file"
  timed vagrant "$pair" up "$netns" exec vagrant up --provider libvirt
  timed vagrant "$pair" ssh "$netns" exec vagrant ssh -c true
  timed vagrant "$pair" status "$netns" exec vagrant status
  timed vagrant "$pair" halt "$netns" exec vagrant halt
  timed vagrant "$pair" up2 "$netns" exec vagrant up
  "$netns" exec vagrant halt >>"$work/vagrant.log" 2>&1
  timed vagrant "$pair" package env PATH="${work}/no-libguestfs:$PATH" "$netns" exec vagrant package --output "$work/vagrant-packaged.box"
  timed vagrant "$pair" destroy "$netns" exec vagrant destroy -f
  rm -f "$work/vagrant-packaged.box"
  cd "$work"
}

loads=()
for pair in $(seq "$pairs"); do
  exec 9>"$lock"
  flock 9
  if [ -z "$box_file" ]; then box_file=$(reference_box); fi
  [ -f "$box_file" ] || { echo "vs-vagrant: no box file $box_file" >&2; exit 2; }
  loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")
  echo "vs-vagrant: pair $pair of $pairs (load ${loads[-1]}, $box_file)" >&2
  box_pair "$pair"
  vagrant_pair "$pair"
  flock -u 9
  grep " $pair " "$work/figures" | tr '\n' ' ' | sed 's/^/vs-vagrant: /;s/$/\n/' >&2
done

python3 - "$work/figures" "$pairs" "$package_note" "${loads[@]}" <<'PY'
import statistics, sys
figures, pairs, package_note, loads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
seconds = {}
for line in open(figures):
    side, pair, op, value = line.split()
    seconds[side, int(pair), op] = float(value)
ops = [('add', 'box add / vagrant box add'), ('up', 'up from nothing to ssh'), ('up2', 'second up'), ('ssh', 'ssh -c true'),
       ('status', 'status'), ('halt', 'halt'), ('destroy', 'destroy'), ('package', 'package')]
print(f"box vs Vagrant + vagrant-libvirt, {pairs} pairs (box then Vagrant); load at each pair's start: {'; '.join(loads)}")
print(f"{'':28} {'box median':>10} {'Vagrant median':>14}  per pair: box s / Vagrant s = ratio")
for op, name in ops:
    a = [seconds['box', p, op] for p in range(1, pairs + 1)]
    b = [seconds['vagrant', p, op] for p in range(1, pairs + 1)]
    per_pair = '  '.join(f"{x:.2f}/{y:.2f}={x / y:.2f}" for x, y in zip(a, b))
    print(f"{name:28} {statistics.median(a):>9.2f}s {statistics.median(b):>13.2f}s  {per_pair}")
print(f"package: box package (zstd) against {package_note}, gzip")
PY
