#!/bin/sh
# box resnap, dracut flavour: SOURCED as a pre-mount hook — never `exit`, only return
# from the function. Same command line as the initramfs-tools script:
#   volgroup=<vg> lvroot=<origin> lvsnap=<snap> lvsize=<size> resnap
# dracut waits for root= in its initqueue before pre-mount: a missing snapshot is made
# there by resnap-repair.sh (an initqueue/settled hook), and not made twice here.
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh
type box_resnap_say >/dev/null 2>&1 || . /lib/box-resnap-lib.sh

box_resnap() {
    getargbool 0 resnap || return 0
    local vg lvroot lvsnap lvsize tries start
    # Just made by resnap-repair.sh: already fresh.
    [ -e /run/box-resnap-created ] && return 0
    vg=$(getarg volgroup=)
    lvroot=$(getarg lvroot=)
    lvsnap=$(getarg lvsnap=)
    lvsize=$(getarg lvsize=)
    for name in "$vg" "$lvroot" "$lvsnap"; do
        case "$name" in
        '' | -* | *[!A-Za-z0-9_.+-]*) die "resnap: bad LVM name '$name' on the kernel command line"; return 1 ;;
        esac
    done
    tries=0
    while ! lvm lvs "$vg/$lvroot" >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ "$tries" -ge 300 ] && { die "resnap: origin $vg/$lvroot not found; cannot recreate $vg/$lvsnap"; return 1; }
        sleep 0.1
    done
    start=$(box_resnap_uptime_cs)
    lvm vgchange -ay "$vg" >/dev/null 2>&1
    if lvm lvs "$vg/$lvsnap" >/dev/null 2>&1; then
        lvm lvremove -f "$vg/$lvsnap" >/dev/null 2>&1 || { die "resnap: cannot remove $vg/$lvsnap"; return 1; }
    fi
    lvm lvcreate -y -s -L "$lvsize" -n "$lvsnap" "$vg/$lvroot" >/dev/null 2>&1 || { die "resnap: cannot create $vg/$lvsnap"; return 1; }
    box_resnap_say "resnap: recreated $vg/$lvsnap ($lvsize) from $vg/$lvroot in $(box_resnap_since "$start") s"
    return 0
}

box_resnap
