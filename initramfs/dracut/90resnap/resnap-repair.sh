#!/bin/sh
# box resnap, dracut flavour, the repair: SOURCED as an initqueue/settled hook while dracut
# waits for root= — never `exit`, only return from the function. The initramfs-tools
# script does the same in local-top, before its wait for root=.
# A power cut between lvremove and the end of lvcreate (a resnap boot that recreated the
# snapshot) leaves no snapshot, or its store as a plain LV: there is nothing to keep, and
# root= would never come. Make it again, as a resnap boot would, whether or not this boot
# asked for resnap (resnap.sh, the pre-mount hook, then leaves the new one alone). Not when
# root= is the origin (a maintainer's boot): a snapshot would only slow its writes.
type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh
type box_resnap_say >/dev/null 2>&1 || . /lib/box-resnap-lib.sh

box_resnap_repair() {
    # Once a boot: the settled hooks run at every turn of dracut's wait.
    [ -e /run/box-resnap-repair.done ] && return 0
    local vg lvroot lvsnap lvsize rootdev snapdm table attr note start
    vg=$(getarg volgroup=)
    lvroot=$(getarg lvroot=)
    lvsnap=$(getarg lvsnap=)
    lvsize=$(getarg lvsize=)
    rootdev=$(getarg root=)
    for name in "$vg" "$lvroot" "$lvsnap"; do
        case "$name" in
        '' | -* | *[!A-Za-z0-9_.+-]*) : >/run/box-resnap-repair.done; return 0 ;;
        esac
    done
    snapdm="$(box_resnap_dm_escape "$vg")-$(box_resnap_dm_escape "$lvsnap")"
    [ "$rootdev" = "/dev/mapper/$snapdm" ] || { : >/run/box-resnap-repair.done; return 0; }
    # The disk may still be probing: look again at the next turn.
    lvm lvs "$vg/$lvroot" >/dev/null 2>&1 || return 0
    : >/run/box-resnap-repair.done
    start=$(box_resnap_uptime_cs)
    lvm vgchange -ay "$vg" >/dev/null 2>&1
    table=$(dmsetup table "$snapdm" 2>/dev/null)
    case "$table" in
    *" snapshot "*) return 0 ;;
    esac
    case "$lvsize" in
    [0-9]*[KkMmGgTt]) ;;
    *) warn "resnap: bad lvsize='$lvsize' on the kernel command line (e.g. lvsize=2G); cannot recreate $vg/$lvsnap"; return 0 ;;
    esac
    # lv_attr of a snapshot starts with s; anything else under its name is a store left by a cut lvcreate.
    attr=$(lvm lvs --noheadings -o lv_attr "$vg/$lvsnap" 2>/dev/null)
    attr=${attr#"${attr%%[! ]*}"}
    if [ -n "$attr" ]; then
        lvm lvremove -f "$vg/$lvsnap" >/dev/null 2>&1 || { warn "resnap: cannot remove the half-made $vg/$lvsnap"; return 0; }
    fi
    lvm lvcreate -y -s -L "$lvsize" -n "$lvsnap" "$vg/$lvroot" >/dev/null 2>&1 || { warn "resnap: cannot create $vg/$lvsnap from $vg/$lvroot"; return 0; }
    : >/run/box-resnap-created
    note=
    getargbool 0 resnap || note=" (no resnap asked, but it was missing or half made)"
    box_resnap_say "resnap: created missing $vg/$lvsnap ($lvsize) from $vg/$lvroot in $(box_resnap_since "$start") s$note"
    return 0
}

box_resnap_repair
