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
# Environment, checked before anything runs:
#   TPU_NAME, ZONE                     always (PROJECT: optional)
#   ACCELERATOR_TYPE, RUNTIME_VERSION  create, e.g. v4-16, tpu-ubuntu2204-base
#                                      (SPOT=1: a spot slice)
#   INSTALL                            install: git+URL@REF (cloned on every
#                                      worker) or a wheel, local or gs://
#                                      (`pip wheel --no-deps -w dist .`)
#   RUN_ROOT                           one run without a bound MODEL_DIR: a
#                                      path every worker mounts, e.g.
#                                      /gcs/<bucket>/runs with MOUNT_BUCKET
#   MOUNT_BUCKET                       optional, install: mount this GCS
#                                      bucket at /gcs/<bucket> on every worker
#                                      (gcsfuse); run directories are plain
#                                      files, so gs:// URLs are refused
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
  : "${ACCELERATOR_TYPE?set ACCELERATOR_TYPE (e.g. v4-16)}"
  : "${RUNTIME_VERSION?set RUNTIME_VERSION (e.g. tpu-ubuntu2204-base)}"
fi
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
for line in "${lines[@]}"; do
  if [[ $line =~ MODEL_DIR[^/]*://|MODEL_DIR[^/]*gs: ]]; then
    # MODEL_DIR's records and lock are plain files: a URL would become a
    # local directory on each worker.
    echo "error: MODEL_DIR must be a path every worker mounts (e.g. /gcs/<bucket>/... with MOUNT_BUCKET), not a URL: $line" >&2
    exit 2
  fi
done

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

if has_step create; then
  spot=()
  if [ "${SPOT:-0}" = 1 ]; then spot=(--spot); fi
  run "${gcloud[@]}" create "$TPU_NAME" "${where[@]}" \
    --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION" "${spot[@]}"
fi

if has_step install; then
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
      on_workers all "set -e; ${mount}rm -rf prompt-tuning; git clone -q $(quote "$url") prompt-tuning; cd prompt-tuning; git checkout -q $(quote "$ref"); cd; $venv; . pt-venv/bin/activate; cd prompt-tuning; $pip -e . 'jax[tpu]'"
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
      run tar -czf "$bundle" -C "$repo" gin_configs launch/worker.sh ${constraints:+"$constraints"}
      run "${gcloud[@]}" scp "${copy[@]}" "$TPU_NAME:" "${where[@]}" --worker=all
      on_workers all "set -e; ${mount}rm -rf prompt-tuning; mkdir prompt-tuning; tar -xzf prompt-tuning-files.tgz -C prompt-tuning; ${fetch}$venv; . pt-venv/bin/activate; cd prompt-tuning; $pip \$HOME/$(quote "$wheel") 'jax[tpu]'"
      ;;
    *)
      echo "error: INSTALL=$INSTALL: expected git+URL@REF or a .whl file" >&2
      exit 2 ;;
  esac
fi

failed=()
if has_step run || has_step attach; then
  # Process and device info first: one line per worker.
  # shellcheck disable=SC2016  # expanded on the workers
  on_workers all 'echo "$(hostname): worker $(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number), $(find /dev -maxdepth 1 -name "accel*" | wc -l) TPU chips, $(nproc) CPUs, $(. pt-venv/bin/activate && python -c "import jax; print(\"jax\", jax.__version__)")"'
  started=1
  for i in "${!lines[@]}"; do
    log="pt-logs/$stamp/run-$((i + 1))"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) run $((i + 1))/${#lines[@]}: ${lines[$i]}"
    if has_step run; then
      # Detached (setsid, nohup): a dropped ssh session does not stop the
      # run; its exit status lands in run-<i>.rc.
      on_workers all "mkdir -p pt-logs/$stamp && cd prompt-tuning && export PROMPT_TUNING_VENV=\$HOME/pt-venv TPU_WORKER_ID=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number) ${REMOTE_ENV:-} && rm -f \$HOME/$log.rc && nohup setsid bash -c 'bash launch/worker.sh \"\$@\" > \"\$0.log\" 2>&1; echo \$? > \"\$0.rc\"' \$HOME/$log ${lines[$i]} --gin_search_paths=gin_configs > /dev/null 2>&1 < /dev/null &"
    fi
    # Worker 0's log until its run ends, then every worker's exit status.
    on_workers 0 "tail -n +1 -F $log.log 2> /dev/null & t=\$!; while [ ! -e $log.rc ]; do sleep 5; done; sleep 2; kill \$t" || true
    if ! on_workers all "while [ ! -e $log.rc ]; do sleep 5; done; rc=\$(cat $log.rc); echo \"\$(hostname): run $((i + 1)) exit \$rc\"; [ \"\$rc\" = 0 ] || tail -n 20 $log.log; exit \"\$rc\""; then
      failed+=("$((i + 1))")
      echo "error: run $((i + 1)) failed on a worker (its last lines are above; logs in ~/$log.log on each worker)" >&2
    fi
  done
fi
finished=1

if has_step delete; then
  run "${gcloud[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: runs ${failed[*]} of ${#lines[@]} failed" >&2
  exit 1
fi
