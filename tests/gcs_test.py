"""`gs://` paths against a real GCS JSON API server (tests/services/gcs.py).

The quickstart trains with `MODEL_DIR=gs://...` and its frozen model read
from `gs://` (HF safetensors), is killed with SIGKILL after its first
checkpoint and resumed to a prompt bit-identical to a local uninterrupted
run's; a second run on a directory in use is refused; `report` reads a sweep
root in the bucket; a T5X checkpoint reads from `gs://` as from disk. The
project finds the server only through STORAGE_EMULATOR_HOST and
TENSORSTORE_GCS_HTTP_URL.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest

from prompt_tuning.models.config import t5_config
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.pretrained.assemble import flat_names
from tests import t5x_fixtures
from tests.pretrained.load_pretrained_test import _tiny_params
from tests.services.gcs import gcs_server  # pylint: disable=unused-import
from tests.training.reliability_test import FAST, ROOT, _command, _env
from tests.training.reliability_test import _error, _ok, _run

# Checkpoints at 4 and 8; the kill comes after the first.
ARGS = ["--gin.TRAIN_STEPS=8", "--gin.TrainConfig.eval_at_start=False",
        "--gin.TrainConfig.eval_period=8",
        "--gin.TrainConfig.checkpoint_period=4",
        "--gin.TrainConfig.log_period=4"]


def _fs():
  return fsspec.filesystem("gs", use_listings_cache=False)


def _upload(local, url):
  _fs().put(local.rstrip("/") + "/", url, recursive=True)


def _wait_for(url, process, seconds=300):
  deadline = time.time() + seconds
  while not _fs().exists(url):
    assert process.poll() is None, "the run ended before " + url
    assert time.time() < deadline, url
    time.sleep(0.2)


@pytest.fixture(scope="module")
def resumed(gcs_server, tmp_path_factory):
  """A local uninterrupted run, and the same run in the bucket killed after
  its first checkpoint and rerun to the end."""
  tmp = tmp_path_factory.mktemp("gcs")
  bucket = f"gs://{gcs_server.bucket}"
  frozen = f"{bucket}/frozen/quickstart"
  _upload(os.path.join(ROOT, "tasks", "quickstart_checkpoint"), frozen)
  straight = str(tmp / "straight")
  _ok(_run(straight, *ARGS))
  model_dir = f"{bucket}/sweep/killed"
  frozen_arg = f"--gin.INITIAL_CHECKPOINT_PATH='{frozen}'"
  with open(tmp / "killed.log", "w") as log:
    process = subprocess.Popen(_command(model_dir, *ARGS, frozen_arg),
                               cwd=ROOT, env=_env(), stdout=log, stderr=log)
    try:
      _wait_for(f"{model_dir}/checkpoint_4/commit_success.txt", process)
    finally:
      process.send_signal(signal.SIGKILL)
      process.wait()
  assert _fs().exists(f"{model_dir}/run.lock")  # left by -9
  final = _ok(_run(model_dir, *ARGS, frozen_arg))
  return {"straight": straight, "model_dir": model_dir, "log": final,
          "bucket": bucket}


def test_kill_9_then_resume_in_a_bucket_is_bit_identical(resumed):
  model_dir = resumed["model_dir"]
  assert "Took over the stale lock" in resumed["log"]
  assert "Resumed from step 4" in resumed["log"]
  fs = _fs()
  assert not fs.exists(f"{model_dir}/run.lock")
  with open(os.path.join(resumed["straight"], "prompts", "step_8.npy"),
            "rb") as f:
    expected = np.load(f)
  np.testing.assert_array_equal(
      np.load(io.BytesIO(fs.cat(f"{model_dir}/prompts/step_8.npy"))),
      expected)
  names = {p.split("/killed/", 1)[1] for p in fs.find(model_dir)}
  for name in ("config.gin", "operative_config.gin", "parameters.json",
               "summary.json", "best.json", "eval/metrics.jsonl",
               "checkpoint_8/commit_success.txt", "prompts/step_8.npy",
               "eval/predictions/quickstart_sentiment_taskless/step_8.jsonl",
               "eval/quickstart_sentiment_taskless-metrics.jsonl"):
    assert name in names, sorted(names)
  assert any(n.startswith("train/events.out.tfevents") for n in names)
  assert any(n.startswith("eval/events.out.tfevents") for n in names)
  # Nothing went to a local directory named after the URL.
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_report_reads_a_sweep_root_in_the_bucket(resumed):
  root = f"{resumed['bucket']}/sweep"
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.report", root], cwd=ROOT,
      env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  csv = _fs().cat(f"{root}/results.csv").decode()
  assert "killed" in csv and "finished" in csv, csv
  assert _fs().exists(f"{root}/summary.md")
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_a_second_run_on_a_bucket_directory_is_refused(gcs_server):
  model_dir = f"gs://{gcs_server.bucket}/locked"
  first = subprocess.Popen(
      _command(model_dir, *FAST, "--gin.TRAIN_STEPS=100000"), cwd=ROOT,
      env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for(f"{model_dir}/run.lock", first)
    line = _error(_run(model_dir, *FAST))
    assert first.poll() is None
  finally:
    first.kill()
    first.wait()
  assert f"is in use by another run (pid {first.pid} on host " in line, line


@pytest.mark.parametrize("kind", ["legacy", "orbax"])
def test_a_t5x_checkpoint_reads_from_a_bucket(gcs_server, tmp_path, kind):
  config = t5_config("t5_1_1_tiny", dtype="float32")
  flat = _tiny_params(config)
  write = (t5x_fixtures.write_t5x_legacy if kind == "legacy"
           else t5x_fixtures.write_t5x_orbax)
  write(str(tmp_path), 3, flat)
  url = f"gs://{gcs_server.bucket}/t5x_{kind}"
  _upload(str(tmp_path), url)
  _, params = load_pretrained(url, config=config)
  loaded = flat_names(params)
  assert set(loaded) == set(flat)
  for name, value in flat.items():
    np.testing.assert_array_equal(np.asarray(loaded[name]), value,
                                  err_msg=name)


def test_emit_puts_runs_in_the_bucket_and_scripts_in_a_local_out(gcs_server,
                                                                  tmp_path):
  sweep = os.path.join(ROOT, "gin_configs", "sweeps", "mini_study.toml")
  root = f"gs://{gcs_server.bucket}/emitted"
  out = str(tmp_path / "out")

  def emit(*extra):
    return subprocess.run(
        [sys.executable, "-m", "prompt_tuning.sweep", "emit", sweep,
         "--root", root, *extra], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=300)

  refused = emit()
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith(
      f"error: --root {root}: `emit` writes commands.txt")
  assert "add --out LOCAL_DIR" in refused.stderr
  result = emit("--out", out, "--slurm_time", "2:00:00", "--slurm_gpus", "2")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(out, "commands.txt")) as f:
    commands = f.read().splitlines()
  # One command per run of the sweep file's grid.
  from prompt_tuning.experiments import sweeps  # pylint: disable=g-import-not-at-top
  assert len(commands) == len(sweeps.expand(sweeps.load(sweep))) == 44
  assert all(f"--gin_bindings=MODEL_DIR = '\"'\"'{root}/" in c
             for c in commands), commands[0]
  with open(os.path.join(out, "slurm_array.sbatch")) as f:
    sbatch = f.read()
  assert f"--commands {out}/commands.txt" in sbatch
  assert "#SBATCH --time=2:00:00\n" in sbatch
  assert "#SBATCH --gpus-per-node=2\n" in sbatch
  assert f"#SBATCH --output={out}/slurm-%A_%a.out" in sbatch
  # The plan the report reads is in the bucket, beside the runs.
  assert _fs().ls(root)
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_slurm_batch_script_runs_and_resumes_in_a_bucket(gcs_server,
                                                         tmp_path, frozen):
  """launch/slurm.sbatch (fake srun: two local JAX processes) with
  RUN_ROOT=gs://...: the job trains there; its requeued attempt (same job
  id) finds that directory, removes the lock its first attempt left, and
  resumes from its checkpoint."""
  # pylint: disable=g-import-not-at-top
  from tests.launch_test import _flags, _free_job_id, _sbatch, per_process
  # pylint: enable=g-import-not-at-top
  run_root = f"gs://{gcs_server.bucket}/slurm"
  job = _free_job_id()
  _sbatch(tmp_path, job, _flags(frozen, 2), RUN_ROOT=run_root)
  (run_dir,) = [p for p in _fs().ls(run_root) if p.endswith(f"-job{job}")]
  _fs().pipe(f"gs://{run_dir}/run.lock",
             b'{"host": "node-that-was-preempted", "pid": 1}')
  again = _sbatch(tmp_path, job, _flags(frozen, 4), restarts=1,
                  RUN_ROOT=run_root)
  assert "(attempt 2)" in again
  assert f"removing the previous attempt's gs://{run_dir}/run.lock" in again
  assert per_process(again, r"Resumed from step 2")[1], again[-3000:]
  assert _fs().exists(f"gs://{run_dir}/prompts/step_4.npy")
  assert [p for p in _fs().ls(run_root) if p.endswith(f"-job{job}")] == [
      run_dir]
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_eval_reads_its_prompt_and_writes_its_results_in_the_bucket(resumed):
  """`python -m prompt_tuning.eval` with PROMPT_PATH and EVAL_OUTPUT_DIR on
  gs://: the prompt of the run in the bucket scores what training's own
  final evaluation scored."""
  out = f"{resumed['bucket']}/eval_out"
  result = _run(None, "--gin_file=models/from_checkpoint.gin",
                "--gin_file=runs/eval.gin",
                "--task_module=prompt_tuning.tasks.quickstart",
                "--gin.INITIAL_CHECKPOINT_PATH='tasks/quickstart_checkpoint'",
                "--gin.MIXTURE_OR_TASK_NAME='quickstart_sentiment_taskless'",
                f"--gin.PROMPT_PATH='{resumed['model_dir']}'",
                f"--gin.EVAL_OUTPUT_DIR='{out}'", module="eval")
  _ok(result)
  names = [p.rsplit("/", 1)[-1] for p in _fs().find(out)]
  assert "metrics.json" in names, names
  history = _fs().cat(
      f"{resumed['model_dir']}/eval/metrics.jsonl").decode().splitlines()
  trained = json.loads(history[-1])["metrics"]
  key = "quickstart_sentiment_taskless/accuracy"
  found = re.findall(key + r"\D*(\d+\.\d+)", result.stderr)
  assert found and float(found[-1]) == pytest.approx(trained[key]), (
      found, trained[key])


def test_sweep_run_and_report_on_a_bucket_root(gcs_server, tmp_path, frozen):
  """`sweep run --root gs://...` (one run of the tests' tiny sweep), then
  `report` on that root: the run finished, its records are in the bucket."""
  # pylint: disable=g-import-not-at-top
  from tests.experiments.sweep_cli_test import _cli, _sweep_file
  # pylint: enable=g-import-not-at-top
  path = _sweep_file(tmp_path, frozen)
  root = f"gs://{gcs_server.bucket}/sweep_run"
  run = _cli("sweep", "run", path, "--root", root, "--only",
             "frozen-tiny__task-tiny_classify__seed-0")
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  report = _cli("report", root)
  assert report.returncode == 0, report.stderr[-2000:]
  csv = _fs().cat(f"{root}/results.csv").decode()
  assert "frozen-tiny__task-tiny_classify__seed-0" in csv and "finished" in csv
  assert _fs().exists(
      f"{root}/frozen-tiny__task-tiny_classify__seed-0/prompts/step_4.npy")
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
