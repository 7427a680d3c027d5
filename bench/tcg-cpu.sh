#!/bin/bash
# Which CPU model boots fastest under TCG (issue 4; why TCG_CPU in src/providers/qemu/accel.ts
# is `max,la57=off,erms=off`). Boots a box's kernel directly, as box up does, once per model
# and run, and prints when sshd listened (guest clock, from the journal) and what a fork+exec
# of /bin/true costs in the guest.
#   bench/tcg-cpu.sh BOX_DIR [RUNS] [MODEL...]
# BOX_DIR: an installed box built by box (box.img, vmlinuz, initrd.img), e.g.
# ~/.local/share/box/boxes/NAME/VERSION/libvirt. Default models: max, max,la57=off,erms=off, EPYC.
set -euo pipefail
box=${1:?usage: bench/tcg-cpu.sh BOX_DIR [RUNS] [MODEL...]}
runs=${2:-2}
shift $(($# < 2 ? $# : 2))
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(max max,la57=off,erms=off EPYC)
key=$(dirname "$0")/../static/insecure_key
work=$(mktemp -d)
trap 'kill "$(cat "$work/qemu.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT
install -m 600 "$key" "$work/key"
# The command line box up gives a resnap boot under TCG (kernelCommandLine + TCG_KERNEL_ARGS).
args=$(python3 - "$box/metadata.json" <<'PY'
import json, sys
box = json.load(open(sys.argv[1]))['box']
lvm = box['lvm']
print(f"root=/dev/mapper/{lvm['vg']}-{lvm['snapshot']} ro volgroup={lvm['vg']} lvroot={lvm['root']} "
      f"lvsnap={lvm['snapshot']} lvsize={lvm['snapshot_size']} resnap {box['kernel_args']} mitigations=off tsc=reliable")
PY
)
for run in $(seq "$runs"); do
  for model in "${models[@]}"; do
    rm -f "$work/disk.qcow2" "$work/qemu.pid"
    qemu-img create -q -f qcow2 -F qcow2 -b "$box/box.img" "$work/disk.qcow2"
    port=$((20000 + RANDOM % 10000))
    qemu-system-x86_64 -machine pc -accel tcg,thread=multi -cpu "$model" -smp 2 -m 1024 -nodefaults -no-user-config -display none \
      -drive "file=$work/disk.qcow2,if=virtio,format=qcow2" -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" \
      -device virtio-net-pci,netdev=net0,romfile= -device virtio-rng-pci -serial none -pidfile "$work/qemu.pid" \
      -kernel "$box/vmlinuz" -initrd "$box/initrd.img" -append "$args" -daemonize 2>/dev/null
    ssh=(ssh -q -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -i "$work/key" -p "$port" box@127.0.0.1)
    sleep 10
    until "${ssh[@]}" true 2>/dev/null; do sleep 1; done
    "${ssh[@]}" 'listening=$(sudo journalctl -b -o short-monotonic | sed -n "s/^\[ *\([0-9.]*\)\].*Server listening on 0.0.0.0.*/\1/p")
      start=$(date +%s%N); for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; end=$(date +%s%N)
      echo "sshd listening at ${listening} s, fork+exec $(( (end - start) / 10000000 )) ms"' | sed "s/^/run $run, -cpu $model: /"
    pid=$(cat "$work/qemu.pid")
    kill "$pid"
    while [ -e "/proc/$pid" ]; do sleep 0.2; done
  done
done
