#!/bin/sh
# Stand-in step that never ends on its own (a hung runner).
while :; do
    sleep 3600
done
