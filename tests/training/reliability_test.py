"""The catalogue of ways a training run can go wrong, each through the real
entry point (`python -m prompt_tuning.train --gin_file=runs/quickstart.gin`,
the README's command, on its committed tiny checkpoint) in a subprocess.

Every case asserts the exit code, exactly one `error:` line (no traceback,
no error-level log noise above it) or the expected message, and that
nothing in MODEL_DIR was lost or changed: a failed start leaves an existing
run directory byte for byte as it was. The cases that need a finished run
share one (`finished`, built once per module) and work on copies of it; the
rest fail before training. The kill test kills a run with SIGKILL three
times and checks that the resumed prompt is bit-identical to an
uninterrupted run's.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# Short runs: no step-0 evaluation, checkpoints every 2 steps, one eval at
# the end (TrainConfig.eval_period=0).
FAST = ["--gin.TRAIN_STEPS=4", "--gin.TrainConfig.eval_at_start=False",
        "--gin.TrainConfig.eval_period=0",
        "--gin.TrainConfig.checkpoint_period=2",
        "--gin.TrainConfig.log_period=1"]
# Error-level lines of libraries (absl `E1203 ...`, Python `ERROR:...`,
# TensorFlow's C++ `E0000 ...`): none may sit above a real `error:` line.
_NOISE = re.compile(r"^(E\d{4} |F\d{4} |ERROR:)")


def _env(extra_path=None, devices=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(p for p in (extra_path, ROOT) if p))
  env.pop("XLA_FLAGS", None)  # one device, as on a laptop
  # What a user's shell has: the CLI itself must keep TensorFlow quiet.
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _command(model_dir, *args, module="train"):
  gin_files = ["--gin_file=runs/quickstart.gin"] if module == "train" else []
  return [sys.executable, "-m", f"prompt_tuning.{module}", *gin_files,
          *([f"--gin.MODEL_DIR='{model_dir}'"] if model_dir else []), *args]


def _run(model_dir, *args, module="train", extra_path=None, devices=None,
         timeout=600):
  return subprocess.run(_command(model_dir, *args, module=module), cwd=ROOT,
                        env=_env(extra_path, devices), capture_output=True,
                        text=True, timeout=timeout)


def _error(result, code=None):
  """The one `error:` line of a failed run (and no traceback or noise)."""
  assert result.returncode != 0, result.stderr[-3000:]
  if code is not None:
    assert result.returncode == code, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  errors = [l for l in lines if l.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  noise = [l for l in lines if _NOISE.match(l)]
  assert not noise, noise
  return errors[0]


def _ok(result):
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not [l for l in result.stderr.splitlines() if l.startswith("error:")]
  return result.stderr


def _snapshot(root):
  """relative path -> bytes of every file under `root`."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _checkpoint_files(snapshot):
  return {k: v for k, v in snapshot.items()
          if k.startswith(("checkpoint_", "prompts/")) or k in (
              "best.json", "config.gin", "operative_config.gin")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 4-step quickstart run (checkpoints 2 and 4); copy, never
  change it."""
  model_dir = str(tmp_path_factory.mktemp("finished") / "run")
  _ok(_run(model_dir, *FAST))
  for name in ("checkpoint_2", "checkpoint_4", "prompts/step_4.npy",
               "config.gin", "operative_config.gin", "best.json",
               "summary.json"):
    assert os.path.exists(os.path.join(model_dir, name)), name
  return model_dir


@pytest.fixture
def run_copy(finished, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(finished, model_dir)
  return model_dir


# --- Bad configuration: refused before anything is read or written. -------


@pytest.mark.parametrize("binding, expected", [
    # A typo'd macro is a new macro to gin: refused, with the real name.
    ("--gin.TRAIN_STEPZ=10", r"Macro TRAIN_STEPZ .* nothing reads it.*Did "
     r"you mean TRAIN_STEPS\?"),
    ("--gin.TrainConfig.train_stepz=10", r"Unknown parameter "
     r"TrainConfig.train_stepz. Did you mean TrainConfig.train_steps\?"),
    ("--gin.PromptConfg.length=4", r"Did you mean PromptConfig\b"),
    ("--gin.evaluate.split='test'", r"this command \(train\) never calls "
     r"evaluate"),
    ("--gin.TRAIN_STEPS=abc", r"--gin.TRAIN_STEPS=abc: 'abc' is not a gin "
     r"value.*quoted string"),
    ("--gin.TRAIN_STEPS=(1", r"--gin.TRAIN_STEPS=\(1: its brackets or "
     r"quotes do not close"),
    ("--gin.TRAIN_STEPS=-5", r"TRAIN_STEPS \(TrainConfig.train_steps\) = "
     r"-5: must be a whole number >= 0"),
    ("--gin.TRAIN_STEPS=2.5", r"TRAIN_STEPS .* = 2.5: must be a whole "
     r"number"),
    ("--gin_file=runs/no_such_run.gin", r"gin file not found"),
    ("--gin.MIXTURE_OR_TASK_NAME='no_such_task'",
     r"No SeqIO task or mixture named 'no_such_task'"),
    ("--gin.TrainConfig.best_metric='quickstart_sentiment_taskless/acc'",
     r"best_metric = 'quickstart_sentiment_taskless/acc' is not a metric "
     r"this run reports.*Did you mean quickstart_sentiment_taskless/"
     r"accuracy"),
    ("--gin.INITIAL_CHECKPOINT_PATH='/no_such_dir/ckpt'", r"/no_such_dir"),
    # Two label words need two prompt positions.
    ("--gin.PROMPT_LENGTH=1", r"2 labels.*PROMPT_LENGTH"),
    ("--gin.PromptConfig.init='from_file'", r"(?i)prompt.*file"),
])
def test_bad_setting_is_one_line_and_leaves_the_run_alone(run_copy, binding,
                                                          expected):
  before = _snapshot(run_copy)
  line = _error(_run(run_copy, *FAST, binding))
  assert re.search(expected, line), line
  # A failed start never rewrites config.gin (or anything else).
  assert _snapshot(run_copy) == before


def test_batch_not_divisible_by_the_mesh(tmp_path):
  model_dir = str(tmp_path / "run")
  line = _error(_run(model_dir, *FAST, "--gin.MESH_SHAPE=(4, 1)",
                     "--gin.BATCH_SIZE=6", devices=4))
  assert "BATCH_SIZE=6 is not divisible by the data-parallel size 4" in line
  assert not os.path.exists(os.path.join(model_dir, "config.gin"))


def test_corrupt_initial_checkpoint(tmp_path):
  frozen = tmp_path / "frozen"
  shutil.copytree(os.path.join(ROOT, "tasks", "quickstart_checkpoint"), frozen)
  weights = frozen / "model.safetensors"
  os.truncate(weights, os.path.getsize(weights) // 2)
  line = _error(_run(str(tmp_path / "run"), *FAST,
                     f"--gin.INITIAL_CHECKPOINT_PATH='{frozen}'"))
  assert "model.safetensors" in line


@pytest.mark.parametrize("kind", ["wrong_shape", "pickled", "missing"])
def test_bad_prompt_file_for_from_file_init(tmp_path, kind):
  path = str(tmp_path / "prompt.npy")
  if kind == "wrong_shape":
    np.save(path, np.zeros((10, 7), np.float32))
    expected = r"\(10, 7\)"
  elif kind == "pickled":
    np.save(path, np.array([{"not": "an array"}], dtype=object),
            allow_pickle=True)
    expected = r"(?i)pickle|object"
  else:
    expected = r"prompt\.npy"
  line = _error(_run(str(tmp_path / "run"), *FAST,
                     "--gin.PromptConfig.init='from_file'",
                     f"--gin.PromptConfig.file='{path}'"))
  assert re.search(expected, line), line


@pytest.mark.parametrize("name, text, expected", [
    ("bad.tsv", "review\tlabel\na fine film\tpos\ntoo\tmany\tcolumns\n",
     r"bad.tsv line 3: 3 tab-separated values for 2 columns"),
    ("bad.jsonl", '{"review": "a fine film", "label": "pos"}\n{not json\n',
     r"bad.jsonl line 2: not JSON"),
    ("empty.tsv", "", r"empty.tsv is empty"),
    ("header_only.tsv", "review\tlabel\n", r"header_only.tsv has no "
     r"examples"),
    ("empty.jsonl", "", r"empty.jsonl has no examples"),
])
def test_malformed_custom_task_files(tmp_path, name, text, expected):
  data = tmp_path / name
  data.write_text(text)
  (tmp_path / "my_tasks.py").write_text(textwrap.dedent(f"""
      from prompt_tuning.data import custom_tasks
      custom_tasks.register_from_files(
          "my_sentiment", {{"train": {str(data)!r},
                           "validation": {str(data)!r}}},
          text_fields=("review",), label_field="label",
          label_words={{"neg": "negative", "pos": "positive"}},
          metric_names=("accuracy",))
      """))
  line = _error(_run(str(tmp_path / "run"), *FAST, "--task_module=my_tasks",
                     "--gin.MIXTURE_OR_TASK_NAME='my_sentiment'",
                     extra_path=str(tmp_path)))
  assert re.search(expected, line), line


@pytest.mark.parametrize("prompt_path", ["/no_such_dir/prompt.npy",
                                         "empty_run_dir"])
def test_eval_of_a_missing_prompt(tmp_path, prompt_path):
  if prompt_path == "empty_run_dir":
    prompt_path = str(tmp_path / "empty_run")
    os.makedirs(prompt_path)
  line = _error(_run(
      None, "--gin_file=models/from_checkpoint.gin",
      "--gin_file=runs/eval.gin", "--task_module=prompt_tuning.tasks.quickstart",
      "--gin.INITIAL_CHECKPOINT_PATH='tasks/quickstart_checkpoint'",
      "--gin.MIXTURE_OR_TASK_NAME='quickstart_sentiment_taskless'",
      f"--gin.PROMPT_PATH='{prompt_path}'",
      f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'eval'}'", module="eval"))
  assert prompt_path in line and "prompt" in line


def test_unwritable_model_dir_names_the_path_in_the_way(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("I am a file")
  line = _error(_run(str(blocker / "run"), *FAST))
  assert f"MODEL_DIR '{blocker}/run' is not usable: {blocker} is a file" in (
      line), line
  assert ".write_probe" not in line and "Errno" not in line
  assert blocker.read_text() == "I am a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_model_dir(tmp_path):
  parent = tmp_path / "read_only"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    line = _error(_run(str(parent / "run"), *FAST))
  finally:
    parent.chmod(0o755)
  assert f"{parent} is not writable" in line


# --- A directory in use. ----------------------------------------------------


def test_a_second_run_on_one_directory_is_refused(tmp_path):
  model_dir = str(tmp_path / "run")
  first = subprocess.Popen(
      _command(model_dir, *FAST, "--gin.TRAIN_STEPS=100000"), cwd=ROOT,
      env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    lock = os.path.join(model_dir, "run.lock")
    deadline = time.time() + 300
    while not os.path.exists(lock):
      assert first.poll() is None and time.time() < deadline
      time.sleep(0.2)
    line = _error(_run(model_dir, *FAST))
    assert first.poll() is None  # the first run is untouched
    with open(lock) as f:
      assert json.load(f)["pid"] == first.pid  # and still holds the lock
  finally:
    first.kill()
    first.wait()
  assert f"is in use by another run (pid {first.pid} on host " in line, line


def test_a_lock_from_another_host_is_refused(run_copy):
  lock = os.path.join(run_copy, "run.lock")
  with open(lock, "w") as f:
    json.dump({"host": "some-other-host", "pid": 4242,
               "started": "2024-01-01 00:00:00"}, f)
  before = _snapshot(run_copy)
  line = _error(_run(run_copy, *FAST))
  assert "pid 4242 on host 'some-other-host'" in line
  assert f"remove {lock}" in line
  assert _snapshot(run_copy) == before


# --- An existing run directory. ---------------------------------------------


def test_train_steps_below_the_reached_step(run_copy):
  before = _snapshot(run_copy)
  line = _error(_run(run_copy, *FAST, "--gin.TRAIN_STEPS=2"))
  assert "already holds a run at step 4, past TRAIN_STEPS=2" in line
  assert _snapshot(run_copy) == before


def test_rerunning_a_finished_run_changes_nothing(run_copy):
  before = _snapshot(run_copy)
  log = _ok(_run(run_copy, *FAST))
  assert "already finished at step 4" in log
  assert _snapshot(run_copy) == before


@pytest.mark.parametrize("damage", ["truncated", "metadata", "no_state"])
def test_a_damaged_newest_checkpoint_is_skipped_and_kept(finished, run_copy,
                                                         damage):
  newest = os.path.join(run_copy, "checkpoint_4")
  if damage == "truncated":
    for folder, _, files in os.walk(os.path.join(newest, "state")):
      if os.path.basename(folder) == "d":
        for name in files:
          os.truncate(os.path.join(folder, name), 10)
  elif damage == "metadata":
    with open(os.path.join(newest, "state", "_METADATA"), "w") as f:
      f.write('{"tree_metadata": ')
  else:
    shutil.rmtree(os.path.join(newest, "state"))
  damaged = _snapshot(newest)
  older = _snapshot(os.path.join(run_copy, "checkpoint_2"))
  # The summary says finished: forget it, as a crash before the end would.
  os.remove(os.path.join(run_copy, "summary.json"))
  log = _ok(_run(run_copy, *FAST))
  assert "Skipped checkpoint step 4" in log
  assert "Resumed from step 2" in log
  assert _snapshot(os.path.join(run_copy, "damaged", "checkpoint_4")) == (
      damaged)
  assert _snapshot(os.path.join(run_copy, "checkpoint_2")) == older
  # Resume is exact: the retrained step 4 equals the original.
  np.testing.assert_array_equal(
      np.load(os.path.join(run_copy, "prompts", "step_4.npy")),
      np.load(os.path.join(finished, "prompts", "step_4.npy")))


# --- Divergence: never saved, never exit 0. ---------------------------------


def test_an_infinite_learning_rate_stops_before_saving_it(run_copy):
  before = _checkpoint_files(_snapshot(run_copy))
  # 1e400 is how gin spells infinity (a float literal that overflows).
  line = _error(_run(run_copy, *FAST, "--gin.TRAIN_STEPS=8",
                     "--gin.AdafactorConfig.learning_rate=1e400"))
  # The state went bad in the step the loss was still finite for.
  assert re.search(r"non-finite \(NaN or inf\) at step 5; stopping, nothing "
                   r"of it saved. The last good checkpoint in .* is step 4",
                   line), line
  after = _snapshot(run_copy)
  assert not [k for k in after if k.startswith("checkpoint_")
              and not k.startswith(("checkpoint_2/", "checkpoint_4/"))]
  for key, value in before.items():
    if key != "config.gin":  # the continuation started: its config is kept
      assert after[key] == value, key
  for key, value in after.items():
    if key.startswith("prompts/"):
      assert np.isfinite(np.load(os.path.join(run_copy, key))).all(), key


def test_an_exploding_prompt_is_an_error(tmp_path):
  model_dir = str(tmp_path / "run")
  line = _error(_run(model_dir, *FAST,
                     "--gin.AdafactorConfig.learning_rate=1e30"))
  assert re.search(r"diverged \(largest \|value\| .*e\+30 > 1.84e\+19.*at "
                   r"step 1; .*No checkpoint was saved yet", line), line
  assert not [n for n in os.listdir(model_dir) if n.startswith("checkpoint_")]


# --- kill -9, three times. --------------------------------------------------


def _newest_step(model_dir):
  steps = [int(n.split("_")[1]) for n in os.listdir(model_dir)
           if re.fullmatch(r"checkpoint_\d+", n)] if os.path.isdir(
               model_dir) else []
  return max(steps, default=0)


def test_kill_9_three_times_resumes_bit_identically(tmp_path):
  args = ["--gin.TRAIN_STEPS=40", "--gin.TrainConfig.eval_at_start=False",
          "--gin.TrainConfig.eval_period=0",
          "--gin.TrainConfig.checkpoint_period=4",
          "--gin.TrainConfig.log_period=10"]
  straight = str(tmp_path / "straight")
  _ok(_run(straight, *args))

  model_dir = str(tmp_path / "killed")
  rng = random.Random(0)
  kills, logs = 0, []
  for attempt in range(10):
    if kills == 3:
      break
    seen = _newest_step(model_dir)
    log_path = str(tmp_path / f"attempt_{attempt}.log")
    with open(log_path, "w") as log:
      process = subprocess.Popen(_command(model_dir, *args), cwd=ROOT,
                                 env=_env(), stdout=log, stderr=log)
      deadline = time.time() + 300
      # Kill soon after this attempt's first save: mid-step or mid-save.
      while _newest_step(model_dir) <= seen and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
      time.sleep(rng.uniform(0.0, 0.15))
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        kills += 1
      process.wait()
    with open(log_path) as f:
      logs.append(f.read())
  assert kills == 3, logs[-1][-3000:]
  assert os.path.exists(os.path.join(model_dir, "run.lock"))  # left by -9
  final = _ok(_run(model_dir, *args))
  assert "Took over the stale lock" in final
  assert "Resumed from step" in final
  assert not os.path.exists(os.path.join(model_dir, "run.lock"))
  np.testing.assert_array_equal(
      np.load(os.path.join(model_dir, "prompts", "step_40.npy")),
      np.load(os.path.join(straight, "prompts", "step_40.npy")))


# --- Interrupted records. ----------------------------------------------------


def test_an_evaluation_cut_short_is_redone_on_resume(run_copy):
  """The state a kill during the final evaluation leaves (checkpoint 4 saved,
  no record of its evaluation, no summary): the rerun evaluates step 4,
  records it once and finishes the run."""
  history = os.path.join(run_copy, "eval", "metrics.jsonl")
  with open(history) as f:
    lines = f.read().splitlines()
  assert json.loads(lines[-1])["step"] == 4
  with open(history, "w") as f:
    f.write("".join(line + "\n" for line in lines[:-1]))
  os.remove(os.path.join(run_copy, "summary.json"))
  log = _ok(_run(run_copy, *FAST))
  assert ("Step 4 was saved but its evaluation never finished (the run "
          "stopped during it): evaluating it now.") in log
  with open(history) as f:
    steps = [json.loads(line)["step"] for line in f.read().splitlines()]
  assert steps.count(4) == 1 and steps[-1] == 4
  with open(os.path.join(run_copy, "summary.json")) as f:
    summary = json.load(f)
  assert summary["finished"] and summary["eval"], summary
  # Finished now: a rerun evaluates nothing again.
  again = _ok(_run(run_copy, *FAST))
  assert "evaluating it now" not in again and "already finished" in again


def test_a_torn_record_line_is_set_aside_never_appended_to(run_copy):
  history = os.path.join(run_copy, "eval", "metrics.jsonl")
  with open(history) as f:
    lines = f.read().splitlines()
  with open(history, "w") as f:  # step 4's line cut mid-write
    f.write("".join(line + "\n" for line in lines[:-1]) + lines[-1][:17])
  os.remove(os.path.join(run_copy, "summary.json"))
  log = _ok(_run(run_copy, *FAST))
  assert f"{history} ended in a line cut short (17 bytes" in log
  with open(history) as f:
    records = [json.loads(line) for line in f.read().splitlines()]
  assert [r["step"] for r in records][-1] == 4
  with open(history + ".torn") as f:
    assert f.read() == lines[-1][:17] + "\n"


@pytest.mark.parametrize("damage", ["truncated", "missing", "other_values"])
def test_a_damaged_newest_prompt_export_is_rewritten_from_its_checkpoint(
    finished, run_copy, damage):
  export = os.path.join(run_copy, "prompts", "step_4.npy")
  with open(export, "rb") as f:
    good = f.read()
  if damage == "truncated":
    os.truncate(export, len(good) // 2)
  elif damage == "missing":
    os.remove(export)
  else:
    np.save(export, np.load(export) + 1.0)
  damaged = b""
  if damage != "missing":
    with open(export, "rb") as f:
      damaged = f.read()
  log = _ok(_run(run_copy, *FAST))
  assert f"Rewrote {export} from checkpoint step 4: " in log, log[-2000:]
  with open(export, "rb") as f:
    assert f.read() == good  # bit for bit what the run exported
  aside = os.path.join(run_copy, "damaged", "prompts", "step_4.npy")
  if damage == "missing":
    assert not os.path.exists(aside)
  else:  # set aside, unchanged, never deleted
    with open(aside, "rb") as f:
      assert f.read() == damaged
  # Repaired once: the next start finds nothing to do.
  assert "Rewrote" not in _ok(_run(run_copy, *FAST))


@pytest.mark.parametrize("damage", ["deleted", "stale", "unreadable"])
def test_best_json_is_rebuilt_by_the_one_rule(run_copy, damage):
  """Step 2 ties step 4 in the history: the rule (and the report) picks the
  earlier step; a rebuilt best.json must say the same."""
  from prompt_tuning.experiments import results  # pylint: disable=g-import-not-at-top
  history = os.path.join(run_copy, "eval", "metrics.jsonl")
  with open(history) as f:
    last = json.loads(f.read().splitlines()[-1])
  assert last["step"] == 4
  with open(history, "a") as f:  # an evaluation of step 2 with step 4's value
    f.write(json.dumps({"step": 2, "metrics": last["metrics"]}) + "\n")
  best_file = os.path.join(run_copy, "best.json")
  if damage == "deleted":
    os.remove(best_file)
  elif damage == "unreadable":
    with open(best_file, "w") as f:
      f.write("{not json")
  log = _ok(_run(run_copy, *FAST))  # "stale": best.json still names step 4
  assert "select step 2: rewriting it" in log, log[-2000:]
  with open(best_file) as f:
    best = json.load(f)
  assert best["step"] == 2
  assert best["value"] == last["metrics"][best["metric"]]
  run = results.read_run(run_copy)
  assert run.selected_step == 2 and not run.problem, run
