#!/usr/bin/env bash
# Prompt tuning on a Cloud TPU VM slice: create it, install the project on
# every worker, run the same train command on all workers at once
# (--worker=all; launch/worker.sh adds --multihost and JAX finds the slice's
# hosts itself), follow worker 0's log, delete the slice. README "Running on
# pods" has a worked example (T5.1.1-XXL on a v4-16).
#
# Usage, from anywhere (it uses the checkout it lives in):
#   launch/tpu_vm.sh [--dry_run] [--steps=LIST] [--] TRAIN_FLAGS...
#       one run: python -m prompt_tuning.train TRAIN_FLAGS; MODEL_DIR =
#       $RUN_ROOT/$TPU_NAME-<UTC timestamp> unless a flag binds it or
#       MODEL_DIR is set (an existing run directory: the run resumes)
#   launch/tpu_vm.sh [--dry_run] [--steps=LIST] --commands FILE
#       a sweep's commands.txt (python -m prompt_tuning.sweep emit): its
#       lines one after another, each a complete command with its MODEL_DIR
#   --dry_run     print every command (gcloud, tar) instead of running it
#   --steps=LIST  comma-separated, in this order, default
#                 create,install,run,delete; `attach` instead of `run`
#                 follows runs started earlier (RUN_STAMP=<their stamp>)
#
# Lifecycle: runs start detached on every worker (nohup setsid), so a
# dropped ssh connection (exit 255) only means "ask again": the launcher
# polls every worker's exit status and reattaches for up to CONTACT_TIMEOUT
# seconds. When a worker's run fails (or its process is gone), the others
# get SIGTERM (they save a checkpoint and stop) and the next run, or the
# deletion, follows. Each run's logs from every worker are copied into
# <MODEL_DIR>/logs/ before the slice goes. The slice is deleted only when
# every run has an exit status: if contact is lost for good it stays up,
# and the launcher says how to reattach and exits 3.
#
# Environment, checked before anything runs:
#   TPU_NAME, ZONE                     always (PROJECT: optional)
#   ACCELERATOR_TYPE                   create, e.g. v4-16, v5litepod-16,
#                                      v5p-32, v6e-16
#   RUNTIME_VERSION                    optional: the default follows the
#                                      generation (v2-v4 tpu-ubuntu2204-base,
#                                      v5e v2-alpha-tpuv5-lite, v5p
#                                      v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
#   SPOT=1                             a spot slice; SPOT_RETRIES=N recreates
#                                      a preempted one up to N times and
#                                      reruns the interrupted run (it resumes)
#   QUEUED=1                           ask through queued resources (waits
#                                      until the slice is ACTIVE)
#   INSTALL                            install: git+URL@REF (cloned on every
#                                      worker) or a wheel, local or gs://
#                                      (`pip wheel --no-deps -w dist .`)
#   RUN_ROOT                           one run without a bound MODEL_DIR: a
#                                      path every worker mounts, e.g.
#                                      /gcs/<bucket>/runs with MOUNT_BUCKET
#   MOUNT_BUCKET                       optional, install: mount this GCS
#                                      bucket at /gcs/<bucket> on every worker
#                                      (gcsfuse), for reading data; write run
#                                      directories to gs:// directly (orbax
#                                      finalises checkpoints by renaming
#                                      directories, which gcsfuse refuses on
#                                      flat buckets)
#   RUN_TIMEOUT                        optional: seconds a run may take; then
#                                      it is stopped (SIGTERM: it saves)
#   CONTACT_TIMEOUT, POLL_SECONDS      seconds without contact before giving
#                                      up (default 1800), between status
#                                      polls (default 30)
#   STOP_GRACE                         seconds a stopped run may take to save
#                                      before it is killed (default 600)
#   KEEP_ON_FAILURE=1                  keep the slice when install or a run
#                                      fails (default: delete it)
#   REMOTE_ENV                         optional NAME=VALUE words exported on
#                                      every worker (e.g. TFDS_DATA_DIR=gs://...)
#   CONSTRAINTS                        pip constraints file of the checkout,
#                                      default .ci/constraints.txt ('' = none)
#   PYTHON_VERSION                     the workers' Python (uv), default 3.11
# On the workers: ~/prompt-tuning (the checkout, or gin_configs/ and launch/
# for a wheel), ~/pt-venv, and logs in ~/pt-logs/<stamp>/run-<i>.log.
set -euo pipefail

dry_run=0 steps=create,install,run,delete commands=""
while [ "$#" -gt 0 ]; do
  case $1 in
    --dry_run) dry_run=1; shift ;;
    --steps=*) steps=${1#--steps=}; shift ;;
    --commands) commands=${2?--commands needs a file}; shift 2 ;;
    --commands=*) commands=${1#--commands=}; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
for step in ${steps//,/ }; do
  case $step in
    create | install | run | attach | delete) ;;
    *) echo "error: unknown step '$step' in --steps=$steps (create, install, run, attach, delete)" >&2
       exit 2 ;;
  esac
done
has_step() { [[ ,$steps, == *,$1,* ]]; }

: "${TPU_NAME?set TPU_NAME (the name of the slice)}"
: "${ZONE?set ZONE (e.g. us-central2-b)}"
if has_step create; then
  : "${ACCELERATOR_TYPE?set ACCELERATOR_TYPE (e.g. v4-16, v5litepod-16, v5p-32, v6e-16)}"
  if [ -z "${RUNTIME_VERSION:-}" ]; then
    case $ACCELERATOR_TYPE in
      v2-* | v3-* | v4-*) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
      v5litepod-* | v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
      v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
      v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
      *) echo "error: no default RUNTIME_VERSION for ACCELERATOR_TYPE=$ACCELERATOR_TYPE: set RUNTIME_VERSION" >&2
         exit 2 ;;
    esac
  fi
fi
for name in RUN_TIMEOUT CONTACT_TIMEOUT POLL_SECONDS STOP_GRACE SPOT_RETRIES; do
  if [ -n "${!name:-}" ] && ! [[ ${!name} =~ ^[0-9]+$ ]]; then
    echo "error: $name=${!name}: expected a whole number" >&2
    exit 2
  fi
done
contact_timeout=${CONTACT_TIMEOUT:-1800} poll=${POLL_SECONDS:-30}
if has_step install; then
  : "${INSTALL?set INSTALL to git+URL@REF or a wheel file}"
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
constraints=${CONSTRAINTS-.ci/constraints.txt}
stamp=${RUN_STAMP:-$(date -u +%Y%m%d-%H%M%S)}

# A word as the shell reads it back: bare when safe, else single-quoted.
quote() {
  local single="'" escaped="'\\''"
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//$single/$escaped}"
  fi
}
quote_all() {
  local word out=""
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}
binds_model_dir() {
  local arg
  for arg in "$@"; do
    case $arg in --gin.MODEL_DIR=* | --gin_bindings=MODEL_DIR*) return 0 ;; esac
  done
  return 1
}

# Every run is one shell command line, the format of commands.txt.
lines=()
if [ -n "$commands" ]; then
  if [ "$#" -gt 0 ]; then
    echo "error: --commands takes no train flags (each line is a complete command): $*" >&2
    exit 2
  fi
  if [ ! -f "$commands" ]; then
    echo "error: --commands $commands: no such file" >&2
    exit 2
  fi
  while IFS= read -r line || [ -n "$line" ]; do
    if [ -n "$line" ]; then lines+=("$line"); fi
  done < "$commands"
elif has_step run || has_step attach; then
  if [ "$#" -eq 0 ]; then
    echo "error: no train flags: launch/tpu_vm.sh --gin_file=... (or --commands FILE)" >&2
    exit 2
  fi
  flags=("$@")
  if ! binds_model_dir "$@"; then
    if [ -z "${MODEL_DIR:-}" ]; then
      : "${RUN_ROOT?set RUN_ROOT (e.g. /gcs/bucket/prompt_tuning) or MODEL_DIR}"
    fi
    flags+=("--gin.MODEL_DIR='${MODEL_DIR:-$RUN_ROOT/$TPU_NAME-$stamp}'")
  fi
  lines+=("python -m prompt_tuning.train $(quote_all "${flags[@]}")")
fi
if { has_step run || has_step attach; } && [ "${#lines[@]}" -eq 0 ]; then
  echo "error: $commands has no commands" >&2
  exit 2
fi

# The MODEL_DIR a command line binds (--gin.MODEL_DIR='...' or
# --gin_bindings=MODEL_DIR = '...'), or nothing.
model_dir_of() {
  local words word value=""
  eval "words=($1)"
  for word in "${words[@]}"; do
    case $word in
      --gin.MODEL_DIR=*) value=${word#--gin.MODEL_DIR=} ;;
      --gin_bindings=MODEL_DIR*=*) value=${word#*=}; value=${value#*=} ;;
    esac
  done
  value=${value#"${value%%[! ]*}"}
  value=${value#[\"\']}
  printf '%s' "${value%[\"\']}"
}

gcloud=(gcloud compute tpus tpu-vm)
where=(--zone "$ZONE")
if [ -n "${PROJECT:-}" ]; then where+=(--project "$PROJECT"); fi

run() {
  echo "+ $(quote_all "$@")"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}
on_workers() {  # WORKERS REMOTE_COMMAND
  run "${gcloud[@]}" ssh "$TPU_NAME" "${where[@]}" "--worker=$1" --command "$2"
}

echo "tpu_vm.sh $stamp: slice $TPU_NAME (${ACCELERATOR_TYPE:-existing}) in $ZONE;" \
  "steps $steps; ${#lines[@]} run(s)$([ "$dry_run" = 1 ] && echo '; dry run')"
for i in "${!lines[@]}"; do echo "run $((i + 1)): ${lines[$i]}"; done

started=0 finished=0
# shellcheck disable=SC2329  # invoked by the trap
on_exit() {
  if [ "$finished" = 0 ] && [ "$started" = 1 ]; then
    echo "tpu_vm.sh stopped early; the slice $TPU_NAME is still up and started runs go on." \
      "Follow them: RUN_STAMP=$stamp launch/tpu_vm.sh --steps=attach[,delete] <same arguments>;" \
      "delete it: launch/tpu_vm.sh --steps=delete" >&2
  fi
}
trap on_exit EXIT

delete_slice() {
  if [ "${QUEUED:-0}" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$TPU_NAME" "${where[@]}" --force --quiet
  else
    run "${gcloud[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
  fi
}

create_slice() {
  local spot=()
  if [ "${SPOT:-0}" = 1 ]; then spot=(--spot); fi
  if [ "${QUEUED:-0}" = 1 ]; then
    run gcloud compute tpus queued-resources create "$TPU_NAME" "${where[@]}" \
      --node-id "$TPU_NAME" --accelerator-type "$ACCELERATOR_TYPE" \
      --runtime-version "$RUNTIME_VERSION" "${spot[@]}"
    if [ "$dry_run" = 1 ]; then return 0; fi
    local state=""
    # Queued resources wait for capacity: poll until the slice is ACTIVE.
    while :; do
      state=$(gcloud compute tpus queued-resources describe "$TPU_NAME" "${where[@]}" \
        --format='value(state.state)' 2> /dev/null || echo UNKNOWN)
      echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) queued resource $TPU_NAME: $state"
      case $state in
        ACTIVE) return 0 ;;
        FAILED | SUSPENDED)
          echo "error: queued resource $TPU_NAME is $state: see gcloud compute tpus queued-resources describe $TPU_NAME" >&2
          return 1 ;;
      esac
      sleep "$poll"
    done
  fi
  run "${gcloud[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION" "${spot[@]}"
}

# An install that fails on any worker ends the launch: say so, and free the
# slice unless KEEP_ON_FAILURE=1. A dropped connection is retried once.
install_on_workers() {
  local status=0
  on_workers all "$1" || status=$?
  if [ "$status" = 255 ]; then
    echo "install: lost contact with a worker (ssh exit 255); trying again"
    status=0
    on_workers all "$1" || status=$?
  fi
  if [ "$status" != 0 ]; then
    echo "error: the install failed on a worker (exit $status; its output is above)" >&2
    finished=1
    if [ "${KEEP_ON_FAILURE:-0}" = 1 ]; then
      echo "KEEP_ON_FAILURE=1: the slice $TPU_NAME stays up; delete it: launch/tpu_vm.sh --steps=delete" >&2
    else
      delete_slice
    fi
    exit 1
  fi
}

install_project() {
  mount=""
  if [ -n "${MOUNT_BUCKET:-}" ]; then
    bucket=$(quote "${MOUNT_BUCKET#gs://}")
    # Google's apt repository for gcsfuse, then the same mount on every worker.
    mount="if ! command -v gcsfuse > /dev/null; then echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null; curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null; sudo apt-get -qq update; sudo apt-get -qq install -y gcsfuse; fi; sudo mkdir -p /gcs/$bucket; sudo chown \$USER /gcs/$bucket; mountpoint -q /gcs/$bucket || gcsfuse --implicit-dirs $bucket /gcs/$bucket; "
  fi
  # uv brings its own Python: the TPU images' python3 (3.10 on Ubuntu 22.04)
  # is older than jax 0.10 needs.
  python=$(quote "${PYTHON_VERSION:-3.11}")
  venv="export PATH=\$HOME/.local/bin:\$PATH; command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; rm -rf pt-venv; uv venv -q --python $python pt-venv"
  pip="uv pip install -q${constraints:+ -c $(quote "$constraints")} -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
  case $INSTALL in
    git+*)
      source=${INSTALL#git+}
      url=${source%@*} ref=${source##*@}
      if [ "$url" = "$source" ] || [ -z "$ref" ]; then
        echo "error: INSTALL=$INSTALL: give a ref, git+URL@REF (a branch, tag or commit)" >&2
        exit 2
      fi
      install_on_workers "set -e; ${mount}rm -rf prompt-tuning; git clone -q $(quote "$url") prompt-tuning; cd prompt-tuning; git checkout -q $(quote "$ref"); cd; $venv; . pt-venv/bin/activate; cd prompt-tuning; $pip -e . 'jax[tpu]'"
      ;;
    *.whl)
      wheel=$(basename "$INSTALL")
      # A wheel holds the package only: the gin files and the worker script
      # travel beside it.
      bundle=$(mktemp -d)/prompt-tuning-files.tgz
      copy=("$bundle") fetch=""
      case $INSTALL in
        gs://*) fetch="gcloud storage cp $(quote "$INSTALL") .; " ;;
        *) if [ ! -f "$INSTALL" ]; then
             echo "error: INSTALL=$INSTALL: no such wheel file" >&2
             exit 2
           fi
           copy+=("$INSTALL") ;;
      esac
      run tar -czf "$bundle" -C "$repo" gin_configs launch/worker.sh launch/detach.sh ${constraints:+"$constraints"}
      run "${gcloud[@]}" scp "${copy[@]}" "$TPU_NAME:" "${where[@]}" --worker=all
      install_on_workers "set -e; ${mount}rm -rf prompt-tuning; mkdir prompt-tuning; tar -xzf prompt-tuning-files.tgz -C prompt-tuning; ${fetch}$venv; . pt-venv/bin/activate; cd prompt-tuning; $pip \$HOME/$(quote "$wheel") 'jax[tpu]'"
      ;;
    *)
      echo "error: INSTALL=$INSTALL: expected git+URL@REF or a .whl file" >&2
      exit 2 ;;
  esac
}

# Remote shell snippets. Worker ids come from the metadata server.
# shellcheck disable=SC2016  # expanded on the workers
worker_id='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'

# One line per worker, "status <id> <rc>|running|gone"; worker 0 also prints
# its log from line $2 on, each line prefixed "log| ".
status_command() {  # LOG FROM_LINE
  # Its status file is read again after the liveness check: the wrapper
  # writes it just before it exits. No pid file yet: still starting.
  printf '%s' "id=$worker_id; if [ \"\$id\" = 0 ] && [ -e $1.log ]; then tail -n +$2 $1.log | sed 's/^/log| /'; fi; if [ -e $1.rc ]; then echo \"status \$id \$(cat $1.rc)\"; elif [ ! -e $1.pid ] || kill -0 \"\$(cat $1.pid)\" 2> /dev/null; then echo \"status \$id running\"; elif [ -e $1.rc ]; then echo \"status \$id \$(cat $1.rc)\"; else echo \"status \$id gone\"; fi"
}

# SIGTERM to every worker's run still going (launch/detach.sh passes it
# on: the run saves a checkpoint and stops); with KILL, its process group.
stop_command() {  # LOG [KILL]
  local how="-TERM \"\$(cat $1.pid)\""
  if [ "${2:-}" = KILL ]; then how="-KILL -- -\"\$(cat $1.pid)\""; fi
  printf '%s' "if [ ! -e $1.rc ] && [ -e $1.pid ]; then kill $how 2> /dev/null || true; fi"
}

# Every worker copies its log of this run into <MODEL_DIR>/logs/.
copy_logs_command() {  # LOG MODEL_DIR RUN
  local target
  target="$(quote "$2")/logs/tpu_vm-$stamp-run-$3-worker-\$id.log"
  printf '%s' "id=$worker_id; case $(quote "$2") in gs://*) gcloud storage cp -q $1.log $target ;; *) mkdir -p $(quote "$2")/logs && cp $1.log $target ;; esac"
}

# Worker 0 writes a marker into MODEL_DIR, every worker must see it: a run
# directory some worker does not share tears every checkpoint.
check_run_directory() {  # MODEL_DIR
  local dir marker
  dir=$(quote "$1") marker="$(quote "$1")/.tpu_vm_check-$stamp"
  on_workers 0 "case $dir in gs://*) echo ok | gcloud storage cp -q - $marker ;; *) mkdir -p $dir && echo ok > $marker ;; esac" || return 1
  if ! on_workers all "case $dir in gs://*) gcloud storage ls $marker > /dev/null ;; *) test -e $marker ;; esac || { echo \"error: worker $worker_id (\$(hostname)) does not see MODEL_DIR $dir\" >&2; exit 1; }"; then
    echo "error: not every worker sees MODEL_DIR $1: use gs://... or a path every worker mounts (MOUNT_BUCKET)" >&2
    return 1
  fi
}

# Follows run $1 (index) until every worker has an exit status (or its
# process is gone). Sets outcome: ok, failed, timeout, preempted (a spot
# slice was taken) or lost (no contact for CONTACT_TIMEOUT seconds: the
# statuses are unknown).
follow_run() {
  local i=$1 log=$2 from=1 output status now line statuses
  local start lost_since="" stopped="" timed_out=0
  start=$(date +%s)
  outcome=""
  while :; do
    status=0
    output=$("${gcloud[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all \
      --command "$(status_command "$log" "$from")" 2> /dev/null) || status=$?
    now=$(date +%s)
    statuses=$(grep '^status ' <<< "$output" | sort -u || true)
    if [ "$status" != 0 ] || [ -z "$statuses" ]; then
      # No answer (ssh exits 255 on a dropped connection): the runs are
      # detached and go on; ask again until CONTACT_TIMEOUT.
      lost_since=${lost_since:-$now}
      if [ "${SPOT:-0}" = 1 ] && slice_preempted; then
        outcome=preempted
        return
      fi
      if [ $((now - lost_since)) -ge "$contact_timeout" ]; then
        outcome=lost
        return
      fi
      echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) no answer from every worker (exit $status) for $((now - lost_since))s; asking again"
      sleep "$poll"
      continue
    fi
    lost_since=""
    while IFS= read -r line; do
      if [[ $line == "log| "* ]]; then
        printf '%s\n' "${line#log| }"
        from=$((from + 1))
      fi
    done <<< "$output"
    if ! grep -q ' running$' <<< "$statuses"; then
      while read -r _ id rc; do
        echo "worker $id: run $((i + 1)) exit $rc"
      done <<< "$statuses"
      if [ "$timed_out" = 1 ]; then
        outcome=timeout
      elif grep -qv ' 0$' <<< "$statuses"; then
        outcome=failed
      else
        outcome=ok
      fi
      return
    fi
    if [ -z "$stopped" ] && grep -qv -e ' running$' -e ' 0$' <<< "$statuses"; then
      # One worker failed (or its process is gone): the others would wait
      # for it in their next collective until their own timeouts.
      echo "run $((i + 1)) failed on a worker ($(grep -v ' running$' <<< "$statuses" | tr '\n' ' ')): stopping it on the others"
      on_workers all "$(stop_command "$log")" || true
      stopped=$now
    elif [ -z "$stopped" ] && [ -n "${RUN_TIMEOUT:-}" ] && [ $((now - start)) -ge "$RUN_TIMEOUT" ]; then
      echo "run $((i + 1)) passed RUN_TIMEOUT=${RUN_TIMEOUT}s: stopping it (it saves a checkpoint)"
      on_workers all "$(stop_command "$log")" || true
      stopped=$now timed_out=1
    elif [ -n "$stopped" ] && [ $((now - stopped)) -ge "${STOP_GRACE:-600}" ]; then
      echo "run $((i + 1)) did not stop within STOP_GRACE=${STOP_GRACE:-600}s of SIGTERM: killing it"
      on_workers all "$(stop_command "$log" KILL)" || true
    fi
    sleep "$poll"
  done
}

slice_preempted() {
  local state
  state=$("${gcloud[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' 2> /dev/null || true)
  [ "$state" = PREEMPTED ]
}

if has_step create; then
  create_slice || { finished=1; exit 1; }
fi

if has_step install; then
  install_project
fi

failed=() unknown=()
if has_step run || has_step attach; then
  # Process and device info first: one line per worker.
  # shellcheck disable=SC2016  # expanded on the workers
  on_workers all 'echo "$(hostname): worker $(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number), $(find /dev -maxdepth 1 -name "accel*" | wc -l) TPU chips, $(nproc) CPUs, $(. pt-venv/bin/activate && python -c "import jax; print(\"jax\", jax.__version__)")"' || true
  started=1
  retries=${SPOT_RETRIES:-0}
  i=0
  while [ "$i" -lt "${#lines[@]}" ]; do
    log="pt-logs/$stamp/run-$((i + 1))"
    model_dir=$(model_dir_of "${lines[$i]}")
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run $((i + 1))/${#lines[@]}: ${lines[$i]}"
    if has_step run; then
      if [ -n "$model_dir" ] && ! check_run_directory "$model_dir"; then
        failed+=("$((i + 1))")
        i=$((i + 1))
        continue
      fi
      # Detached (launch/detach.sh under nohup setsid, only it in the
      # background, its output away from the session, so ssh returns at
      # once): a dropped ssh session does not stop the run; its exit status
      # lands in run-<i>.rc.
      on_workers all "mkdir -p pt-logs/$stamp && cd prompt-tuning && export PROMPT_TUNING_VENV=\$HOME/pt-venv TPU_WORKER_ID=$worker_id ${REMOTE_ENV:-} && rm -f \$HOME/$log.rc \$HOME/$log.pid && { nohup setsid bash launch/detach.sh \$HOME/$log bash launch/worker.sh ${lines[$i]} --gin_search_paths=gin_configs > /dev/null 2>&1 < /dev/null & }" || true
    fi
    if [ "$dry_run" = 1 ]; then
      echo "then, every ${poll}s until each worker has an exit status: $(status_command "$log" 1)"
      i=$((i + 1))
      continue
    fi
    follow_run "$i" "$log"
    case $outcome in
      preempted)
        if [ "$retries" -gt 0 ] && has_step install; then
          retries=$((retries - 1))
          echo "the spot slice $TPU_NAME was preempted during run $((i + 1)): recreating it ($retries retries left); the run resumes from its checkpoint"
          delete_slice || true
          create_slice || { finished=1; exit 1; }
          install_project
          continue
        fi
        unknown+=("$((i + 1))") ;;
      lost) unknown+=("$((i + 1))") ;;
      ok) ;;
      timeout) failed+=("$((i + 1))")
         echo "error: run $((i + 1)) passed RUN_TIMEOUT and was stopped (resumable: rerun it)" >&2 ;;
      *) failed+=("$((i + 1))")
         echo "error: run $((i + 1)) failed on a worker (worker 0's log is above; every worker's is in ~/$log.log there and in MODEL_DIR/logs)" >&2 ;;
    esac
    if [ "$outcome" != lost ] && [ "$outcome" != preempted ] && [ -n "$model_dir" ]; then
      on_workers all "$(copy_logs_command "$log" "$model_dir" "$((i + 1))")" ||
        echo "warning: could not copy every worker's log of run $((i + 1)) to $model_dir/logs" >&2
    fi
    if [ "$outcome" = lost ]; then break; fi
    i=$((i + 1))
  done
fi
finished=1

if [ "${#unknown[@]}" -gt 0 ]; then
  echo "error: lost contact with the slice during run ${unknown[*]}: its status is unknown, so the slice $TPU_NAME stays up." \
    "Follow it: RUN_STAMP=$stamp launch/tpu_vm.sh --steps=attach,delete <same arguments>" >&2
  exit 3
fi
if has_step delete; then
  if [ "${#failed[@]}" -gt 0 ] && [ "${KEEP_ON_FAILURE:-0}" = 1 ]; then
    echo "KEEP_ON_FAILURE=1: the slice $TPU_NAME stays up" >&2
  else
    delete_slice
  fi
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: runs ${failed[*]} of ${#lines[@]} failed" >&2
  exit 1
fi
