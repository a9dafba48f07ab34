#!/bin/sh
# Stand-in step: one line to stdout, one to stderr, then exits with CODE (default 0).
# Usage: exit_code.sh [CODE]
echo "exit_code.sh: to stdout"
echo "exit_code.sh: to stderr" >&2
exit "${1:-0}"
