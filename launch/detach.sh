#!/usr/bin/env bash
# Runs a command that outlives the ssh session that started it, for
# launch/tpu_vm.sh. Start it with `nohup setsid bash launch/detach.sh BASE
# COMMAND...`: it writes its process (group) id to BASE.pid, the command's
# output to BASE.log and, when the command ends, its exit status to BASE.rc.
# SIGTERM to this script is passed on to the command (a train run then
# saves a checkpoint and exits 75) and the status is still written; SIGKILL
# to the process group ends both, leaving no BASE.rc.
set -uo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: launch/detach.sh BASE COMMAND..." >&2
  exit 2
fi
base=$1
shift
rm -f "$base.rc"
echo "$$" > "$base.pid"
"$@" > "$base.log" 2>&1 &
child=$!
# shellcheck disable=SC2064  # the child's pid, now
trap "kill -TERM $child 2> /dev/null" TERM
status=0
wait "$child" || status=$?
while kill -0 "$child" 2> /dev/null; do
  # wait returned for the trapped signal: the command is still stopping.
  status=0
  wait "$child" || status=$?
done
echo "$status" > "$base.rc.tmp" && mv "$base.rc.tmp" "$base.rc"
