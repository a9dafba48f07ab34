#!/bin/sh
# Stand-in step that escapes its process group: starts a grandchild in a new session
# (setsid) that sleeps forever, writes the grandchild's pid to PIDFILE, and exits 0 at
# once -- or, with --wait, stays alive itself too.
#
# Usage: detach_child.sh PIDFILE [--wait]
pidfile=${1:?usage: detach_child.sh PIDFILE [--wait]}
setsid /bin/sh -c 'echo $$ > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 1000000' sh "$pidfile" \
    </dev/null >/dev/null 2>&1 &
# Do not return before the pid is on disk, so callers can always check it.
while [ ! -s "$pidfile" ]; do
    sleep 0.01
done
echo "detached $(cat "$pidfile")"
if [ "${2:-}" = "--wait" ]; then
    while :; do
        sleep 3600
    done
fi
exit 0
