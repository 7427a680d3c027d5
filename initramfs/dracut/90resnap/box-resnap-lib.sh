#!/bin/sh
# Helpers of box's dracut resnap hooks (installed as /lib/box-resnap-lib.sh): SOURCED by
# them, so only function definitions here.

# The device-mapper name of <vg>/<lv>: dashes inside either name doubled.
box_resnap_dm_escape() {
    local left escaped
    left=$1
    escaped=
    while :; do
        case "$left" in
        *-*)
            escaped="$escaped${left%%-*}--"
            left=${left#*-}
            ;;
        *)
            printf '%s' "$escaped$left"
            return 0
            ;;
        esac
    done
}

# On the console (the serial log, where box and its tests read it) even with `quiet`, and in
# the kernel log at info level (<6>: the kernel does not echo it to the console a second time).
box_resnap_say() {
    echo "$*" >/dev/console 2>/dev/null
    echo "<6>$*" >/dev/kmsg 2>/dev/null
    return 0
}

# Hundredths of a second since boot, from /proc/uptime ("12.34 ...").
box_resnap_uptime_cs() {
    local up whole frac
    read -r up _ </proc/uptime
    whole=${up%.*}
    frac=${up#*.}
    echo $((whole * 100 + 1$frac - 100))
}

# Seconds since $1 (hundredths from box_resnap_uptime_cs), as "1.23".
box_resnap_since() {
    local took cents
    took=$(($(box_resnap_uptime_cs) - $1))
    cents=$((took % 100))
    [ "$cents" -lt 10 ] && cents="0$cents"
    echo "$((took / 100)).$cents"
}
