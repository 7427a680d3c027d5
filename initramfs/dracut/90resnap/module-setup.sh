#!/bin/bash
# dracut module for box's resnap (Fedora/RHEL-like boxes). dracut 056 removed its own
# rd.lvm.snapshot feature; this brings the same behaviour back. Booted for real by
# boxes/debian-bookworm-dracut (test/e2e/resnap-dracut.test.ts); `box build` installs it for
# a recipe with `initramfs: dracut`.
# By hand: cp -r 90resnap /usr/lib/dracut/modules.d/ && dracut -f --add resnap

check() {
    require_binaries lvm || return 1
    # Only when asked for (dracut --add resnap).
    return 255
}

depends() {
    echo lvm
    return 0
}

installkernel() {
    instmods dm_mod dm_snapshot
}

install() {
    inst_multiple lvm dmsetup
    inst_simple "$moddir/box-resnap-lib.sh" /lib/box-resnap-lib.sh
    # Hooks are sourced by dracut's init: neither script may `exit`.
    # A missing snapshot where root= points, made while dracut waits for root=.
    inst_hook initqueue/settled 90 "$moddir/resnap-repair.sh"
    inst_hook pre-mount 10 "$moddir/resnap.sh"
}
