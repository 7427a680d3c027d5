#!/usr/bin/env bash
# `box add` against `vagrant box add` of the same local .box file, paired A B, each run into a fresh
# store of its own (BOX_DATA_DIR / VAGRANT_HOME in a temp folder). Prints wall, user and system
# seconds per pair (GNU time) and the medians of the wall times.
#   bench/add-vs-vagrant.sh BOX_FILE [PAIRS]     (default 5 pairs; run `npm run build` first)
set -euo pipefail
file=$1
pairs=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq "$pairs"); do
  d=$work/$i
  mkdir -p "$d"
  /usr/bin/time -o "$d/box.time" -f '%e %U %S' env BOX_DATA_DIR="$d/box" BOX_CACHE_DIR="$d/cache" \
    "$root/bin/run.js" add bench-add "$file" >/dev/null 2>&1
  /usr/bin/time -o "$d/vagrant.time" -f '%e %U %S' env VAGRANT_HOME="$d/vagrant" \
    vagrant box add --name bench-add "$file" >/dev/null 2>&1
  echo "pair $i  box: $(cat "$d/box.time")  vagrant: $(cat "$d/vagrant.time")"
  rm -rf "$d/box" "$d/cache" "$d/vagrant"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
box=$(for i in $(seq "$pairs"); do cut -d' ' -f1 "$work/$i/box.time"; done | median)
vagrant=$(for i in $(seq "$pairs"); do cut -d' ' -f1 "$work/$i/vagrant.time"; done | median)
echo "median wall: box ${box} s, vagrant ${vagrant} s, ratio $(awk -v a="$box" -v b="$vagrant" 'BEGIN {printf "%.2f", a / b}')"
