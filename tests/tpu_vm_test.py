"""launch/tpu_vm.sh against a fake `gcloud`: each worker a local home.

The fake runs `gcloud compute tpus tpu-vm ssh --worker=...` commands in
each worker's home directory ($FAKE_TPU/w<k>), logs every call, and can
drop status polls the way a lost connection does (exit 255). The runs are
real detached processes (launch/detach.sh), so a dropped poll, a failing
worker, a timeout and a stop by SIGTERM happen for real; only the cloud is
fake. The dry run checks the gcloud lines for a real slice.
"""

import os
import re
import subprocess
import textwrap

from tests.launch_test import LAUNCH, ROOT, VENV, write_tool

# gcloud compute tpus {tpu-vm {create,delete,describe,scp,ssh},
# queued-resources ...}: worker k is the home directory $FAKE_TPU/w<k>;
# every call is logged to $FAKE_TPU/calls. While $FAKE_TPU/drop holds a
# number N > 0, the next N status polls fail with ssh's exit 255 (-1: all).
FAKE_GCLOUD = textwrap.dedent("""\
    import os, shutil, subprocess, sys
    root = os.environ["FAKE_TPU"]
    args = sys.argv[1:]
    with open(os.path.join(root, "calls"), "a") as f:
      f.write(" ".join(args) + "\\n")
    assert args[:2] == ["compute", "tpus"], args
    verb, rest = args[3], args[4:]
    homes = sorted(n for n in os.listdir(root) if n.startswith("w"))
    worker = next((a.split("=", 1)[1] for a in rest
                   if a.startswith("--worker=")), "all")
    homes = homes if worker == "all" else [f"w{worker}"]
    if verb == "ssh":
      command = rest[rest.index("--command") + 1]
      drop = os.path.join(root, "drop")
      if "status " in command and os.path.exists(drop):
        left = int(open(drop).read())
        if left:
          open(drop, "w").write(str(left - 1 if left > 0 else left))
          print("ssh: connect to host: Connection timed out", file=sys.stderr)
          sys.exit(255)
      children = [subprocess.Popen(
          ["bash", "-c", command], cwd=os.path.join(root, h),
          env=dict(os.environ, HOME=os.path.join(root, h),
                   FAKE_WORKER=h[1:])) for h in homes]
      sys.exit(max(c.wait() for c in children))
    if verb == "scp":
      files = [a for a in rest if not a.startswith("-") and not a.endswith(":")
               and a != os.environ.get("ZONE")]
      for h in homes:
        for name in files:
          shutil.copy(name, os.path.join(root, h))
    """)


def _tpu_env(**extra):
  env = dict(os.environ, TPU_NAME="pt-xxl", ZONE="us-central2-b",
             ACCELERATOR_TYPE="v4-16", RUNTIME_VERSION="tpu-ubuntu2204-base",
             INSTALL="git+https://github.com/me/prompt-tuning.git@v1",
             RUN_ROOT="/gcs/bucket/runs", MOUNT_BUCKET="bucket")
  env.update(extra)
  return env


def _tpu(tmp_path, *args, **env):
  return subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), *args],
                        cwd=str(tmp_path), env=_tpu_env(**env),
                        capture_output=True, text=True, timeout=300)


def _commands(tmp_path):
  """(the dry run's '+ ' command lines) of a dry run with these args."""
  return lambda result: [line[2:] for line in result.stdout.splitlines()
                         if line.startswith("+ ")]


def _slice(tmp_path, workers=2):
  """A fake slice: worker homes with the checkout and the venv, gcloud and
  the metadata server on PATH. Returns (fake root, env overrides)."""
  fake = tmp_path / "tpu"
  for worker in range(workers):
    (fake / f"w{worker}").mkdir(parents=True)
    os.symlink(ROOT, fake / f"w{worker}" / "prompt-tuning")
    os.symlink(VENV, fake / f"w{worker}" / "pt-venv")
  bin_dir = str(tmp_path / "bin")
  write_tool(bin_dir, "gcloud", FAKE_GCLOUD)
  with open(os.path.join(bin_dir, "curl"), "w") as f:
    f.write("#!/usr/bin/env bash\necho \"$FAKE_WORKER\"\n")
  os.chmod(os.path.join(bin_dir, "curl"), 0o755)
  return fake, {"PATH": f"{bin_dir}:{os.environ['PATH']}",
                "FAKE_TPU": str(fake), "RUN_STAMP": "20250101-000000",
                "POLL_SECONDS": "1"}


def _calls(fake):
  with open(fake / "calls") as f:
    return f.read().splitlines()


def test_dry_run_prints_every_command(tmp_path):
  result = _tpu(tmp_path, "--dry_run", "--gin_file=models/t5_1_1_lm100k_xxl.gin",
                "--gin.MESH_SHAPE=(2, 4)")
  assert result.returncode == 0, result.stderr
  commands = _commands(tmp_path)(result)
  verbs = [c.split()[4] for c in commands]
  assert verbs == ["create", "ssh", "ssh", "ssh", "ssh", "ssh", "delete"]
  assert ("--accelerator-type v4-16 --version tpu-ubuntu2204-base"
          in commands[0])
  install, info, mark, check, start = commands[1:6]
  assert "--worker=all" in install and "git checkout -q v1" in install
  assert "gcsfuse --implicit-dirs bucket /gcs/bucket" in install
  assert "uv venv -q --python 3.11 pt-venv" in install
  assert "uv pip install -q -c .ci/constraints.txt" in install
  assert "-e . " in install and "jax[tpu]" in install
  assert "--worker=all" in info and "TPU chips" in info
  # One timestamped run directory under RUN_ROOT, checked on every worker.
  stamp = re.search(r"tpu_vm\.sh (\d{8}-\d{6}):", result.stdout).group(1)
  run_dir = f"/gcs/bucket/runs/pt-xxl-{stamp}"
  assert "--worker=0" in mark and f"{run_dir}/.tpu_vm_check-{stamp}" in mark
  assert "--worker=all" in check and f".tpu_vm_check-{stamp}" in check
  assert "--worker=all" in start and "launch/detach.sh" in start
  assert "bash launch/worker.sh" in start and "nohup setsid" in start
  assert run_dir in start and "--gin_search_paths=gin_configs" in start
  assert "then, every 30s until each worker has an exit status" in result.stdout
  assert commands[-1].endswith("delete pt-xxl --zone us-central2-b --quiet")

  wheel = tmp_path / "prompt_tuning-0.1.0-py3-none-any.whl"
  wheel.write_bytes(b"")
  result = _tpu(tmp_path, "--dry_run", "--steps=install", INSTALL=str(wheel))
  assert result.returncode == 0, result.stderr
  tar, scp, ssh = _commands(tmp_path)(result)
  assert tar.startswith("tar -czf")
  assert "gin_configs launch/worker.sh launch/detach.sh" in tar
  assert "tpu-vm scp" in scp and str(wheel) in scp and "--worker=all" in scp
  assert "$HOME/prompt_tuning-0.1.0-py3-none-any.whl" in ssh


def test_dry_run_queued_spot_generations_and_gs_run_roots(tmp_path):
  result = _tpu(tmp_path, "--dry_run", "--gin_file=x.gin", QUEUED="1",
                SPOT="1", ACCELERATOR_TYPE="v5litepod-16", RUNTIME_VERSION="",
                RUN_ROOT="gs://bucket/runs")
  assert result.returncode == 0, result.stderr
  commands = _commands(tmp_path)(result)
  assert commands[0].startswith(
      "gcloud compute tpus queued-resources create pt-xxl --zone "
      "us-central2-b --node-id pt-xxl --accelerator-type v5litepod-16 "
      "--runtime-version v2-alpha-tpuv5-lite --spot")
  assert commands[-1] == ("gcloud compute tpus queued-resources delete pt-xxl "
                          "--zone us-central2-b --force --quiet")
  # A gs:// run root: the marker goes through gcloud storage.
  assert any("gs://bucket/runs/pt-xxl-" in c and "gcloud storage cp" in c
             for c in commands)
  for accelerator, runtime in (("v5p-32", "v2-alpha-tpuv5"),
                               ("v6e-16", "v2-alpha-tpuv6e"),
                               ("v3-8", "tpu-ubuntu2204-base")):
    result = _tpu(tmp_path, "--dry_run", "--steps=create",
                  ACCELERATOR_TYPE=accelerator, RUNTIME_VERSION="")
    assert f"--version {runtime}" in result.stdout, result.stderr
  unknown = _tpu(tmp_path, "--dry_run", "--steps=create",
                 ACCELERATOR_TYPE="v9-8", RUNTIME_VERSION="")
  assert unknown.returncode == 2
  assert unknown.stderr.startswith("error: no default RUNTIME_VERSION")
  bad = _tpu(tmp_path, "--dry_run", "--steps=create", RUN_TIMEOUT="1h")
  assert bad.returncode == 2
  assert bad.stderr.startswith("error: RUN_TIMEOUT=1h: expected a whole number")

  env = _tpu_env()
  del env["ZONE"]
  missing = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"),
                            "--dry_run", "--gin_file=x.gin"], env=env,
                           capture_output=True, text=True)
  assert missing.returncode != 0 and "ZONE: set ZONE" in missing.stderr
  bad = _tpu(tmp_path, "--dry_run", "--steps=create,launch")
  assert bad.returncode == 2
  assert bad.stderr.startswith("error: unknown step 'launch'")


# A run that stops cleanly on SIGTERM, as a train run does (exit 75).
_STOPPABLE = ("import signal, sys, time; "
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); "
              "[time.sleep(0.1) for _ in range(600)]")


def test_runs_survive_dropped_polls_a_failing_worker_stops_the_others(
    tmp_path):
  """Run 1 succeeds on both workers through two dropped status polls; in
  run 2 worker 1 fails, so worker 0's run gets SIGTERM (it exits 75); every
  worker's logs land in each MODEL_DIR/logs; the slice is deleted."""
  fake, env = _slice(tmp_path)
  (fake / "drop").write_text("2")
  first, second = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
  fail_on_1 = ("import os, sys; "
               "sys.exit(3) if os.environ['TPU_WORKER_ID'] == '1' else None; "
               + _STOPPABLE)
  hello = ("import os, sys, time; time.sleep(3); print('hello from', "
           "os.environ['TPU_WORKER_ID'], sys.argv[1:2])")
  commands = tmp_path / "commands.txt"
  commands.write_text(
      f"python -c \"{hello}\" --gin.MODEL_DIR='{first}'\n"
      f"python -c \"{fail_on_1}\" --gin.MODEL_DIR='{second}'\n")
  result = _tpu(tmp_path, "--steps=run,delete", "--commands", str(commands),
                **env)
  out = result.stdout
  assert result.returncode == 1, out + result.stderr
  assert "error: runs 2 of 2 failed" in result.stderr
  assert out.count("asking again") == 2
  # Worker 0's log, followed: its info line, then the command's output.
  assert "hello from 0 ['--gin.MODEL_DIR=" in out
  assert re.search(r"pid \d+ process 0/\?", out)
  assert "worker 0: run 1 exit 0" in out and "worker 1: run 1 exit 0" in out
  assert "stopping it on the others" in out
  assert "worker 0: run 2 exit 75" in out and "worker 1: run 2 exit 3" in out
  for run_dir, run in ((first, 1), (second, 2)):
    for worker in (0, 1):
      log = (run_dir / "logs" /
             f"tpu_vm-20250101-000000-run-{run}-worker-{worker}.log")
      assert log.exists(), log
  assert "hello from 1" in (first / "logs" /
                            "tpu_vm-20250101-000000-run-1-worker-1.log"
                            ).read_text()
  assert _calls(fake)[-1].startswith("compute tpus tpu-vm delete")


def test_lost_contact_keeps_the_slice(tmp_path):
  fake, env = _slice(tmp_path)
  (fake / "drop").write_text("-1")
  commands = tmp_path / "commands.txt"
  commands.write_text(f"python -c \"{_STOPPABLE}\" "
                      f"--gin.MODEL_DIR='{tmp_path / 'run'}'\n")
  result = _tpu(tmp_path, "--steps=run,delete", "--commands", str(commands),
                CONTACT_TIMEOUT="3", **env)
  assert result.returncode == 3, result.stdout + result.stderr
  assert "status is unknown, so the slice pt-xxl stays up" in result.stderr
  assert "RUN_STAMP=20250101-000000" in result.stderr
  assert not [c for c in _calls(fake) if " delete " in f" {c} "]
  # The run goes on; stop it (as a later `attach` would find it).
  subprocess.run(["bash", "-c", "for w in w0 w1; do kill -TERM \"$(cat "
                  f"{fake}/$w/pt-logs/20250101-000000/run-1.pid)\"; done"],
                 check=True)


def test_run_timeout_stops_the_run(tmp_path):
  fake, env = _slice(tmp_path)
  commands = tmp_path / "commands.txt"
  commands.write_text(f"python -c \"{_STOPPABLE}\" "
                      f"--gin.MODEL_DIR='{tmp_path / 'run'}'\n")
  result = _tpu(tmp_path, "--steps=run,delete", "--commands", str(commands),
                RUN_TIMEOUT="4", **env)
  out = result.stdout
  assert result.returncode == 1, out + result.stderr
  assert "passed RUN_TIMEOUT=4s: stopping it" in out
  assert "worker 0: run 1 exit 75" in out and "worker 1: run 1 exit 75" in out
  assert "run 1 passed RUN_TIMEOUT and was stopped" in result.stderr
  assert _calls(fake)[-1].startswith("compute tpus tpu-vm delete")


def test_a_run_directory_a_worker_does_not_see_is_refused(tmp_path):
  fake, env = _slice(tmp_path)
  commands = tmp_path / "commands.txt"
  # Relative: each fake worker resolves it in its own home, as a worker
  # would a local disk.
  commands.write_text("python -c 'print(1)' --gin.MODEL_DIR='local/run'\n")
  result = _tpu(tmp_path, "--steps=run,delete", "--commands", str(commands),
                **env)
  assert result.returncode == 1, result.stdout + result.stderr
  assert "error: worker 1" in result.stderr
  assert ("error: not every worker sees MODEL_DIR local/run: use gs://... or "
          "a path every worker mounts") in result.stderr
  assert not (fake / "w0" / "pt-logs").exists()  # never started
  assert _calls(fake)[-1].startswith("compute tpus tpu-vm delete")


def test_a_failed_install_says_so_and_frees_the_slice(tmp_path):
  fake, env = _slice(tmp_path)
  # git clone of an unreachable URL fails on every worker.
  result = _tpu(tmp_path, "--steps=install,run,delete", "--gin_file=x.gin",
                INSTALL="git+file:///nonexistent/repo@v1", **env)
  assert result.returncode == 1, result.stdout + result.stderr
  assert "error: the install failed on a worker" in result.stderr
  assert _calls(fake)[-1].startswith("compute tpus tpu-vm delete")
  kept = _tpu(tmp_path, "--steps=install,run,delete", "--gin_file=x.gin",
              INSTALL="git+file:///nonexistent/repo@v1", KEEP_ON_FAILURE="1",
              **env)
  assert kept.returncode == 1
  assert "KEEP_ON_FAILURE=1: the slice pt-xxl stays up" in kept.stderr
  assert "delete" not in _calls(fake)[-1]
