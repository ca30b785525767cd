"""Errors before the wait: each missing input of a run through the real entry
point (`python -m prompt_tuning.train`), in a subprocess, as the reliability
catalogue does.

Each case asserts the exit code, exactly one `error:` line naming the path
(no traceback) and that nothing was written (no MODEL_DIR, or no checkpoint
in it): before, the same cases ended in ~90 s of storage retries and a
120-line traceback. "The network is down" is a storage endpoint that
refuses connections (STORAGE_EMULATOR_HOST on a closed port), so the cases
behave the same on machines with and without network. The disk-full cases
point writes of one file at /dev/full (a real ENOSPC from the kernel),
through a `sitecustomize` module on the subprocess's PYTHONPATH.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
from tensorflow_datasets.core import constants as tfds_constants

from prompt_tuning.data import prepare
from prompt_tuning.training import preflight
from tests.training.reliability_test import FAST, ROOT, _command, _env
from tests.training.reliability_test import _error, _ok


def _closed_port() -> int:
  """A local port nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(model_dir, *args, env_update=None, unset=(), extra_path=None):
  env = _env(extra_path)
  env.update(env_update or {})
  for name in unset:
    env.pop(name, None)
  return subprocess.run(_command(model_dir, *FAST, *args), cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def _failed_fast(result, model_dir, code=1):
  """The one error line of a start refused before anything was written
  (how fast, seconds instead of minutes of storage retries, is measured,
  not asserted: see the in-process test that no storage call is made)."""
  line = _error(result, code)
  assert not os.path.exists(model_dir), os.listdir(model_dir)
  return line


# --- The vocabulary. --------------------------------------------------------

# A task of tasks/custom_example.py: T5's SentencePiece vocabulary, local TSV
# files (no TFDS), so the vocabulary is the only input in question.
_SPM_TASK = ["--task_module=prompt_tuning.tasks.custom_example",
             "--gin.MIXTURE_OR_TASK_NAME='custom_example_sentiment'",
             "--gin.TrainConfig.best_metric=''"]


def test_missing_vocabulary_file(tmp_path):
  model_dir = str(tmp_path / "run")
  missing = str(tmp_path / "no_such" / "sentencepiece.model")
  result = _train(model_dir, *_SPM_TASK,
                           env_update={"T5_VOCABULARY": missing})
  line = _failed_fast(result, model_dir)
  assert f"Vocabulary T5_VOCABULARY={missing}: no such file" in line, line


def test_unreachable_default_vocabulary_fails_in_seconds(tmp_path):
  model_dir = str(tmp_path / "run")
  result = _train(
      model_dir, *_SPM_TASK, unset=("T5_VOCABULARY",),
      env_update={"STORAGE_EMULATOR_HOST": f"127.0.0.1:{_closed_port()}"})
  line = _failed_fast(result, model_dir)
  assert "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model" in (
      line), line
  assert "is unreachable (cannot connect to 127.0.0.1:" in line, line
  assert ("without network access to gs://t5-data, set T5_VOCABULARY to a "
          "local copy of sentencepiece.model") in line, line


def test_unreachable_gs_never_reaches_the_storage_client(monkeypatch):
  """Its retries are what took ~50 s: a refused connection must end the
  check before any storage call is made."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{_closed_port()}")
  monkeypatch.setattr(preflight, "_REACHED", {})
  asked = []
  for name in ("exists", "isfile", "isdir", "listdir", "read_bytes"):
    monkeypatch.setattr(preflight.storage, name,
                        lambda *a, _n=name: asked.append(_n))
  with pytest.raises(preflight.PreflightError, match="unreachable"):
    preflight.check_vocabulary("gs://t5-data/vocabs/x/sentencepiece.model")
  assert not asked


@pytest.mark.parametrize("readable", [True, False])
def test_gs_vocabulary_is_asked_only_within_the_time_limit(monkeypatch,
                                                           readable):
  """Each storage question about a gs:// vocabulary runs in `_ask`'s
  time-limited thread, never unguarded in the caller's; a readable file is
  asked about once."""
  monkeypatch.setattr(preflight, "_REACHED", {preflight._endpoint(): None})
  asked = []

  def question(name, answer):
    def ask(_):
      asked.append((name, threading.current_thread() is
                    threading.main_thread()))
      return answer
    return ask

  monkeypatch.setattr(preflight.storage, "isfile",
                      question("isfile", readable))
  monkeypatch.setattr(preflight.storage, "exists", question("exists", False))
  path = "gs://bucket/vocab/sentencepiece.model"
  if readable:
    preflight.check_vocabulary(path)
    assert asked == [("isfile", False)]
  else:
    with pytest.raises(preflight.PreflightError,
                       match=f"^Vocabulary {path}: no such file; "):
      preflight.check_vocabulary(path)
    assert asked == [("isfile", False), ("exists", False)]


def test_gs_default_tfds_data_dir_is_probed_before_tfds_opens_it(
    monkeypatch):
  """$TFDS_DATA_DIR on gs:// (TFDS's default data_dir) gets the same probe
  as a source's own gs:// data_dir: refused, TFDS is never asked."""
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{_closed_port()}")
  monkeypatch.setattr(preflight, "_REACHED", {})
  monkeypatch.setattr(tfds_constants, "DATA_DIR", "gs://bucket/tfds")
  opened = []
  monkeypatch.setattr(prepare, "builder", lambda *a: opened.append(a))
  dataset = prepare.TfdsDataset("super_glue/boolq:1.0.2", None, (), ("t",))
  with pytest.raises(preflight.PreflightError, match=(
      r"^Task t: TFDS data_dir gs://bucket/tfds is unreachable \(cannot "
      r"connect to 127\.0\.0\.1:")):
    preflight.check_tfds(dataset, "t")
  assert not opened


# --- The frozen checkpoint. -------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "not_a_checkpoint"])
def test_local_checkpoint(tmp_path, kind):
  model_dir = str(tmp_path / "run")
  path = str(tmp_path / "frozen")
  if kind == "not_a_checkpoint":
    os.makedirs(path)
    with open(os.path.join(path, "notes.txt"), "w") as f:
      f.write("not a model")
  result = _train(model_dir, f"--gin.INITIAL_CHECKPOINT_PATH='{path}'")
  line = _failed_fast(result, model_dir)
  expected = ("no such file or directory" if kind == "missing" else
              "not a checkpoint")
  assert f"INITIAL_CHECKPOINT_PATH {path}: {expected}" in line, line
  assert "Hugging Face directory" in line, line


def test_unreachable_gs_checkpoint_fails_in_seconds(tmp_path):
  model_dir = str(tmp_path / "run")
  path = "gs://no-such-bucket-here/t5x/checkpoint_1100000"
  result = _train(
      model_dir, f"--gin.INITIAL_CHECKPOINT_PATH='{path}'",
      env_update={"STORAGE_EMULATOR_HOST": f"127.0.0.1:{_closed_port()}"})
  line = _failed_fast(result, model_dir)
  assert f"INITIAL_CHECKPOINT_PATH {path} is unreachable (cannot connect" in (
      line), line


# --- The TFDS data. ---------------------------------------------------------


def test_unprepared_tfds_data(tmp_path):
  model_dir = str(tmp_path / "run")
  data_dir = str(tmp_path / "tensorflow_datasets")
  os.makedirs(data_dir)
  result = _train(
      model_dir, "--task_module=prompt_tuning.tasks.super_glue",
      "--gin.MIXTURE_OR_TASK_NAME='super_glue_boolq_v102'",
      "--gin.TrainConfig.best_metric=''",
      env_update={"TFDS_DATA_DIR": data_dir})
  line = _failed_fast(result, model_dir)
  assert ("Task super_glue_boolq_v102: TFDS dataset super_glue/boolq:1.0.2 "
          "is not prepared") in line, line
  assert data_dir in line, line
  assert ("prepare it with `python -m prompt_tuning.data prepare "
          "super_glue_boolq_v102`") in line, line


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_eval_and_infer_check_their_inputs_too(tmp_path, command):
  """The same checks before an evaluation or inference loads anything:
  unprepared data, then (data there) an unreachable gs:// checkpoint."""
  out = str(tmp_path / "out")
  gin = {"eval": ["--gin_file=runs/eval.gin",
                  f"--gin.EVAL_OUTPUT_DIR='{out}'"],
         "infer": ["--gin_file=runs/infer.gin",
                   f"--gin.OUTPUT_PATH='{out}/predictions.jsonl'"]}[command]
  data_dir = str(tmp_path / "tensorflow_datasets")
  os.makedirs(data_dir)
  common = [sys.executable, "-m", f"prompt_tuning.{command}",
            "--gin_file=models/from_checkpoint.gin", *gin,
            f"--gin.PROMPT_PATH='{tmp_path / 'prompt.npy'}'"]
  env = dict(_env(), TFDS_DATA_DIR=data_dir,
             STORAGE_EMULATOR_HOST=f"127.0.0.1:{_closed_port()}")
  unprepared = subprocess.run(
      common + ["--task_module=prompt_tuning.tasks.super_glue",
                "--gin.MIXTURE_OR_TASK_NAME='super_glue_boolq_v102'",
                "--gin.INITIAL_CHECKPOINT_PATH='tasks/quickstart_checkpoint'"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  line = _error(unprepared, 1)
  assert "TFDS dataset super_glue/boolq:1.0.2 is not prepared" in line, line
  path = "gs://no-such-bucket-here/hf_t5"
  unreachable = subprocess.run(
      common + ["--task_module=prompt_tuning.tasks.quickstart",
                "--gin.MIXTURE_OR_TASK_NAME='quickstart_sentiment_taskless'",
                f"--gin.INITIAL_CHECKPOINT_PATH='{path}'"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  line = _error(unreachable, 1)
  assert f"INITIAL_CHECKPOINT_PATH {path} is unreachable" in line, line
  assert not os.path.exists(out)


# --- Gin values: checked where they are bound. ------------------------------


@pytest.mark.parametrize("binding, expected", [
    ("--gin.train.dropout_rate='high'", "train.dropout_rate = 'high': must "
     "be a number (float) or None; set by --gin.train.dropout_rate='high'."),
    ("--gin.train.fsdp=1", "train.fsdp = 1: must be True or False"),
    ("--gin.MESH_SHAPE=(1, 'a')", "MESH_SHAPE (train.mesh_shape) = (1, 'a'): "
     "must be a list of (a whole number (int), a whole number (int)); set by "
     "--gin.MESH_SHAPE=(1, 'a') (through %MESH_SHAPE, bound in "),
])
def test_wrong_type_of_a_function_parameter(tmp_path, binding, expected):
  model_dir = str(tmp_path / "run")
  line = _failed_fast(_train(model_dir, binding), model_dir, code=2)
  assert expected in line, line


def test_wrong_type_on_the_command_line(tmp_path):
  model_dir = str(tmp_path / "run")
  result = _train(model_dir, "--gin.AdafactorConfig.learning_rate='fast'")
  line = _failed_fast(result, model_dir, code=2)
  assert ("AdafactorConfig.learning_rate = 'fast': must be a number (float); "
          "set by --gin.AdafactorConfig.learning_rate='fast'.") in line, line


def test_wrong_type_in_a_gin_file_names_file_and_line(tmp_path):
  model_dir = str(tmp_path / "run")
  gin_file = tmp_path / "fast.gin"
  gin_file.write_text(textwrap.dedent("""\
      include 'runs/quickstart.gin'
      LEARNING_RATE = 'fast'
      AdafactorConfig.learning_rate = %LEARNING_RATE
      """))
  result = _train(model_dir, f"--gin_file={gin_file}")
  line = _failed_fast(result, model_dir, code=2)
  assert (f"LEARNING_RATE (AdafactorConfig.learning_rate) = 'fast': must be a "
          f"number (float); set in {gin_file}:2 (through %LEARNING_RATE, "
          f"bound in {gin_file}:3)") in line, line


def test_misspelt_parameter_in_a_gin_file_names_file_and_line(tmp_path):
  model_dir = str(tmp_path / "run")
  gin_file = tmp_path / "typo.gin"
  gin_file.write_text("include 'runs/quickstart.gin'\n\n"
                      "AdafactorConfig.learning_rat = 0.1\n")
  result = _train(model_dir, f"--gin_file={gin_file}")
  line = _failed_fast(result, model_dir, code=2)
  assert (f"Unknown parameter AdafactorConfig.learning_rat (in {gin_file}:3)."
          f" Did you mean AdafactorConfig.learning_rate?") in line, line


# --- A damaged lock. --------------------------------------------------------


def test_lock_with_a_pid_that_is_no_number_is_taken_over(tmp_path):
  model_dir = str(tmp_path / "run")
  os.makedirs(model_dir)
  lock = os.path.join(model_dir, "run.lock")
  with open(lock, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": "abc",
               "started": "2024-01-01 00:00:00"}, f)
  result = _train(model_dir, "--gin.TRAIN_STEPS=0")
  log = _ok(result)
  assert f"Took over the damaged lock {lock}: its pid 'abc' is not a " \
      "process id" in log, log[-2000:]
  assert "invalid literal" not in log
  assert not os.path.exists(lock)  # released at the end


# --- A full disk. -----------------------------------------------------------

_FULL_DISK = """
import builtins, io, os, re

_PATTERN = os.environ.get("PROMPT_TUNING_TEST_FULL")
if _PATTERN:
  _open = builtins.open

  def _open_full(file, mode="r", *args, **kwargs):
    # Writes to matching paths go to /dev/full: the kernel's ENOSPC.
    if (isinstance(file, (str, os.PathLike)) and set(mode) & set("wax")
        and re.search(_PATTERN, os.fspath(file))):
      file = "/dev/full"
    return _open(file, mode, *args, **kwargs)

  builtins.open = io.open = _open_full
"""


@pytest.mark.parametrize("target, name", [
    (r"/eval/metrics\.jsonl$", "eval/metrics.jsonl"),
    (r"/prompts/step_2\.npy\.tmp-\d+$", "prompts/step_2.npy")])
def test_disk_full_names_the_file_and_the_step(tmp_path, target, name):
  hook = tmp_path / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(_FULL_DISK)
  model_dir = str(tmp_path / "run")
  result = _train(model_dir, "--gin.TRAIN_STEPS=2",
                     env_update={"PROMPT_TUNING_TEST_FULL": target},
                     extra_path=str(hook))
  line = _error(result, 1)
  assert (f"error: no space left on device: writing "
          f"{os.path.join(model_dir, name)} at step 2 failed; free space "
          f"there (or choose another MODEL_DIR") in line, line
  assert "the run resumes from its last checkpoint" in line, line


# --- Each distinct input is checked once. -----------------------------------


def test_checker_checks_each_distinct_input_once(monkeypatch, frozen):
  calls = []
  monkeypatch.setattr(preflight, "check_checkpoint", calls.append)
  import tests.tiny_tasks  # pylint: disable=g-import-not-at-top
  tests.tiny_tasks.register()
  checker = preflight.Checker()
  for _ in range(3):
    checker.check_run(frozen, "tiny_classify")
  checker.check_run(frozen + "_other", "tiny_copy")
  assert calls == [frozen, frozen + "_other"]
