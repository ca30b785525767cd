"""Runs a prompt_tuning command as N JAX processes on this machine.

What a pod launcher does across hosts, on one machine: each process gets its
own slice of fake CPU devices (`--devices_per_process`), the coordinator
address of process 0 and its index, so the multi-host code paths (per-host
data shards, global arrays from host-local batches, process-0-only writes,
collectives) run for real. For debugging a multi-host setup before paying
for a pod, and for the tests.

  python launch/local_processes.py --processes 2 --devices_per_process 2 -- \\
      -m prompt_tuning.train --gin_file=runs/quickstart.gin \\
      --gin.MODEL_DIR="'/tmp/two_hosts'"

Everything after `--` is the Python command line of every process; this
adds `--multihost --coordinator_address=... --process_count=N
--process_index=i`. Output lines are prefixed with `[i]`. If one process
fails, the others are stopped, and the exit status is the first failure's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from typing import List, Sequence


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _pump(index: int, stream, out) -> None:
  for line in stream:
    out.write(f"[{index}] {line}")
    out.flush()


def launch(command: Sequence[str], processes: int,
           devices_per_process: int, python: str = sys.executable,
           env: dict | None = None) -> int:
  """Starts the processes, streams their output, returns an exit status."""
  if processes < 1 or devices_per_process < 1:
    raise ValueError("--processes and --devices_per_process must be >= 1.")
  address = f"localhost:{_free_port()}"
  base = dict(os.environ if env is None else env)
  base["JAX_PLATFORMS"] = "cpu"
  base["XLA_FLAGS"] = (f"{base.get('XLA_FLAGS', '')} "
                       f"--xla_force_host_platform_device_count="
                       f"{devices_per_process}").strip()
  children: List[subprocess.Popen] = []
  pumps = []
  for index in range(processes):
    argv = [python, *command, "--multihost",
            f"--coordinator_address={address}",
            f"--process_count={processes}", f"--process_index={index}"]
    child = subprocess.Popen(argv, env=base, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    children.append(child)
    pump = threading.Thread(target=_pump, args=(index, child.stdout,
                                                sys.stdout), daemon=True)
    pump.start()
    pumps.append(pump)
  status = 0
  remaining = set(range(processes))
  try:
    while remaining:
      for index in sorted(remaining):
        code = children[index].poll()
        if code is None:
          continue
        remaining.discard(index)
        if code != 0 and status == 0:
          status = code
          # A lost peer would leave the others waiting in a collective.
          for other in remaining:
            children[other].terminate()
      if remaining:
        try:
          children[min(remaining)].wait(timeout=0.2)
        except subprocess.TimeoutExpired:
          pass
  finally:
    # Interrupted (Ctrl-C) or failed: no process outlives the launcher.
    for child in children:
      if child.poll() is None:
        child.terminate()
  for pump in pumps:
    pump.join(timeout=5)
  return status


def main(argv: Sequence[str]) -> int:
  if "--" not in argv:
    print("error: put the command after `--`, e.g. `-- -m "
          "prompt_tuning.train --gin_file=...`", file=sys.stderr)
    return 2
  split = list(argv).index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  args = parser.parse_args(argv[:split])
  command = argv[split + 1:]
  if not command:
    print("error: no command after `--`.", file=sys.stderr)
    return 2
  try:
    return launch(command, args.processes, args.devices_per_process)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
