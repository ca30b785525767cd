#!/usr/bin/env bash
# Installs what tests/slurm_test.py needs to run a private SLURM cluster on
# this machine: Debian's slurm-wlm (slurmctld, slurmd, sbatch, srun, ...) and
# munge (munged, mungekey). Does nothing when they are already installed;
# runs `apt-get update` only when the packages are not known yet. Needs root
# (or sudo); the tests run the daemons as root too.
#
# Usage: bash tests/services/install.sh
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for tool in sbatch srun scontrol sinfo slurmctld slurmd munged mungekey; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo > /dev/null; then
  as_root=(sudo)
else
  echo "error: ${missing[*]} missing and not root, no sudo: install slurm-wlm and munge (apt-get install slurm-wlm munge) as root" >&2
  exit 1
fi
if ! command -v apt-get > /dev/null; then
  echo "error: ${missing[*]} missing and no apt-get: install SLURM (slurmctld, slurmd, client commands) and munge with this system's packages" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
packages=(slurm-wlm munge)
if ! apt-cache show "${packages[@]}" > /dev/null 2>&1; then
  "${as_root[@]}" apt-get update -qq
fi
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
for tool in "${missing[@]}"; do
  if ! command -v "$tool" > /dev/null; then
    echo "error: $tool still missing after installing ${packages[*]}" >&2
    exit 1
  fi
done
