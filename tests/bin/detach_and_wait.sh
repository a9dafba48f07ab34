#!/bin/sh
# detach_child.sh PIDFILE --wait: a detached grandchild, and the step stays alive too.
exec "$(dirname "$0")/detach_child.sh" "${1:?usage: detach_and_wait.sh PIDFILE}" --wait
