#!/usr/bin/env bash
# timed.sh NAME CMD...: runs CMD, then prints one line with its wall time and
# the CPU time (user and system) of CMD and every child it waited for, so a
# slow CI step can be told apart from a loaded machine (the CPU time moves
# little with load, the wall time a lot). Exits with CMD's status.
set -uo pipefail
name=$1
shift
TIMEFORMAT="%R %U %S"
{ time "$@" 2>&3 3>&-; } 3>&2 2>"/tmp/timed.$$"
rc=$?
read -r wall user sys < <(tail -n 1 "/tmp/timed.$$")
rm -f "/tmp/timed.$$"
printf 'time: %-10s wall %6.1fs  cpu %7.1fs (user %.1fs, sys %.1fs)  exit %d\n' "$name" "$wall" "$(awk "BEGIN{print $user+$sys}")" "$user" "$sys" "$rc"
exit "$rc"
