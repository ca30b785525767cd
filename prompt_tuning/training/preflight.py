"""Cheap checks that a run's inputs are there, before any heavy work.

A run reads three things a user supplies outside its gin files: the
SentencePiece vocabulary of its tasks (`$T5_VOCABULARY`, else T5's public
copy on gs://t5-data), the frozen checkpoint (`INITIAL_CHECKPOINT_PATH`,
local or gs://) and the TFDS data behind its SeqIO tasks. Each missing one
used to surface minutes in, as a long traceback after gcsfs's retries
(~90 s without network). Here each is looked at once, in seconds, and a
missing one is a `PreflightError`: one line saying what is missing, where,
and how to get it. `train` runs these checks before it loads a model;
`python -m prompt_tuning.sweep plan/run/emit` runs them once per distinct
vocabulary, checkpoint and dataset of the sweep.

A `gs://` path is first probed with one TCP connection to the storage
endpoint (`STORAGE_EMULATOR_HOST` when set, as gcsfs does), which fails at
once without network (no DNS) and within `CONNECT_TIMEOUT_S` behind a
firewall that drops packets; only a reachable endpoint is then asked about
the object, with `REMOTE_TIMEOUT_S` as the limit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
from typing import Any, Callable, Dict, Optional, Set, Tuple

import seqio

from prompt_tuning import storage
from prompt_tuning.data import prepare
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies
from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import t5x

# A storage endpoint that answers at all accepts a connection in well under
# a second; a firewall that drops packets would otherwise hang for minutes.
CONNECT_TIMEOUT_S = 5.0
# One metadata request, once connected (credential lookup included).
REMOTE_TIMEOUT_S = 30.0
_GCS_ENDPOINT = "https://storage.googleapis.com"
_PREPARE = "python -m prompt_tuning.data prepare"
_CHECKPOINT_KINDS = ("a T5X checkpoint (a model dir, a checkpoint_<N>/ dir "
                     "or its `checkpoint` file) or a Hugging Face directory "
                     "(config.json + model.safetensors)")


class PreflightError(ValueError):
  """A run input that is missing or unreachable (a one-line message)."""


class _Unreachable(Exception):
  """The storage behind a path did not answer; the message says why."""


# --------------------------------------------------------------- gs:// reach


def _endpoint() -> str:
  """The storage endpoint gcsfs talks to (its rule for the emulator)."""
  emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if emulator in ("", "default"):
    return _GCS_ENDPOINT
  return emulator if "://" in emulator else f"http://{emulator}"


_REACHED: Dict[str, Optional[str]] = {}


def _probe(path: str) -> None:
  """Raises _Unreachable when the storage endpoint of a gs:// path takes no
  connection (remembered per endpoint: one probe per process)."""
  if not path.startswith("gs://"):
    return
  endpoint = _endpoint()
  if endpoint not in _REACHED:
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
      socket.create_connection((url.hostname, port),
                               timeout=CONNECT_TIMEOUT_S).close()
      _REACHED[endpoint] = None
    except OSError as e:
      reason = (f"no answer in {CONNECT_TIMEOUT_S:.0f} s"
                if isinstance(e, socket.timeout) else e.strerror or str(e))
      _REACHED[endpoint] = f"cannot connect to {url.hostname}:{port}: {reason}"
  if _REACHED[endpoint] is not None:
    raise _Unreachable(_REACHED[endpoint])


def _ask(path: str, question: Callable[[str], Any]) -> Any:
  """`question(path)`, for a gs:// path only once its endpoint answers and
  within REMOTE_TIMEOUT_S.

  Raises:
    _Unreachable: no connection, or no answer in time.
    OSError: what the storage said (FileNotFoundError, PermissionError).
  """
  if not storage.is_remote(path):
    return question(path)
  _probe(path)
  outcome = {}

  def ask() -> None:
    try:
      outcome["value"] = question(path)
    except Exception as e:  # pylint: disable=broad-except
      outcome["error"] = e

  # A daemon thread: a storage client stuck in its retries must not keep
  # the process from reporting and exiting.
  thread = threading.Thread(target=ask, daemon=True)
  thread.start()
  thread.join(REMOTE_TIMEOUT_S)
  if thread.is_alive():
    raise _Unreachable(f"no answer in {REMOTE_TIMEOUT_S:.0f} s")
  if "error" in outcome:
    error = outcome["error"]
    if isinstance(error, (OSError, ValueError)):
      raise error
    raise _Unreachable(" ".join(str(error).split()) or type(error).__name__)
  return outcome["value"]


def _is_readable_file(path: str) -> bool:
  if storage.is_remote(path):
    return storage.isfile(path)
  return os.path.isfile(path) and os.access(path, os.R_OK)


# ---------------------------------------------------------------- the checks


def _vocabulary_source(path: str) -> Tuple[str, str]:
  """(the variable that chose `path`, T5's public copy) when `path` is the
  T5 or mT5 vocabulary; ('', '') for a task's own vocabulary file."""
  for env, default, current in (
      (vocabularies.T5_ENV, vocabularies.DEFAULT_T5_PATH,
       vocabularies.t5_path()),
      (vocabularies.MT5_ENV, vocabularies.DEFAULT_MT5_PATH,
       vocabularies.mt5_path())):
    if path == current:
      return env, default
  return "", ""


def check_vocabulary(path: str) -> None:
  """Refuses a SentencePiece model file that is missing or unreadable.

  Raises:
    PreflightError: naming the file, the variable that sets it and, for
      T5's public copy on gs://t5-data, what to do without network access.
  """
  env, default = _vocabulary_source(path)
  if env and os.environ.get(env):
    setting, fix = f"{env}={path}", (
        f"set {env} to a SentencePiece model file (a copy of {default})")
  elif env:
    setting, fix = f"{path} (the default; {env} is not set)", (
        f"set {env} to a local copy of sentencepiece.model")
  else:
    setting, fix = path, "fix the vocabulary path of the task"

  def problem(p: str) -> Optional[str]:
    if _is_readable_file(p):
      return None
    return "not a readable file" if storage.exists(p) else "no such file"

  try:
    # Both questions inside `_ask`: on gs:// each is a request that must be
    # time-limited, and a readable file needs no second one.
    reason = _ask(path, problem)
  except _Unreachable as e:
    if path.startswith("gs://t5-data/"):
      fix = (f"without network access to gs://t5-data, set "
             f"{env or vocabularies.T5_ENV} to a local copy of "
             f"sentencepiece.model (where there is access: gsutil cp {path} "
             f".)")
    raise PreflightError(f"Vocabulary {setting} is unreachable ({e}); "
                         f"{fix}.") from None
  except OSError as e:
    reason = e.strerror or " ".join(str(e).split())
  if reason:
    raise PreflightError(f"Vocabulary {setting}: {reason}; {fix}.")


def check_checkpoint(path: str) -> None:
  """Refuses an initial checkpoint that is not there or not a checkpoint.

  Accepts what `prompt_tuning.pretrained.load_pretrained` reads: a Hugging
  Face directory, or a T5X model dir / checkpoint_<N>/ dir / `checkpoint`
  file, legacy or orbax. Reads directory listings and file names only.

  Raises:
    PreflightError: naming the path and what would be accepted.
  """
  if not path:
    raise PreflightError(
        "INITIAL_CHECKPOINT_PATH is not set: prompt tuning needs a pretrained "
        f"T5 to freeze: {_CHECKPOINT_KINDS}.")
  where = f"INITIAL_CHECKPOINT_PATH {path}"

  def looks_like_checkpoint(p: str) -> Optional[str]:
    if not storage.exists(p):
      return "no such file or directory"
    if hf.is_hf_checkpoint(p):
      return None
    try:
      t5x.find_t5x_checkpoint(p)
    except (FileNotFoundError, ValueError):
      return ("not a checkpoint (no config.json + safetensors, no T5X "
              "`checkpoint` file or orbax item, in it or a checkpoint_<N>/)")
    return None

  try:
    problem = _ask(path, looks_like_checkpoint)
  except _Unreachable as e:
    raise PreflightError(
        f"{where} is unreachable ({e}); check the network and the bucket "
        f"name, or copy the checkpoint to a local directory.") from None
  except OSError as e:
    problem = e.strerror or " ".join(str(e).split())
  if problem:
    raise PreflightError(f"{where}: {problem}; set it to {_CHECKPOINT_KINDS}."
                         )


def _without_missing_info(record: logging.LogRecord) -> bool:
  return "dataset_info.json" not in record.getMessage()


def check_tfds(dataset: prepare.TfdsDataset, task: str) -> None:
  """Refuses a TFDS dataset that is not prepared (nothing is downloaded).

  Args:
    dataset: what the task reads (`prepare.tfds_datasets`): the TFDS name,
      e.g. 'super_glue/boolq:1.0.2', its data directory (None: TFDS's
      default, $TFDS_DATA_DIR or ~/tensorflow_datasets) and splits.
    task: the SeqIO task that reads it, for the message.

  Raises:
    PreflightError: naming the dataset, the directory and the command that
      prepares it.
  """
  name, data_dir = dataset.name, dataset.data_dir

  def prepared(root: Optional[str]) -> Tuple[str, str]:
    built = prepare.builder(dataset, root)
    return prepare.state(dataset, built), os.fspath(built.data_dir)

  shown = data_dir or "TFDS's default data_dir ($TFDS_DATA_DIR or " \
      "~/tensorflow_datasets)"
  # What is asked: TFDS's default may be a gs:// $TFDS_DATA_DIR too, which
  # needs the same probe and time limit as a source's own gs:// data_dir.
  asked = data_dir or prepare.default_data_dir()
  # tfds warns that an unprepared version folder "has no dataset_info.json":
  # the error below says so in its one line.
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_without_missing_info)
  try:
    state, version_dir = _ask(asked, lambda _: prepared(data_dir))
  except _Unreachable as e:
    raise PreflightError(
        f"Task {task}: TFDS data_dir {asked} is unreachable ({e}); check "
        f"the network, or prepare the data locally with `{_PREPARE} {task}`."
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises its own types for unknown datasets and configs.
    raise PreflightError(
        f"Task {task}: TFDS dataset {name} cannot be opened in {shown} "
        f"({' '.join(str(e).split())[:300]}).") from None
  finally:
    absl_logger.removeFilter(_without_missing_info)
  if state == "not prepared":
    raise PreflightError(
        f"Task {task}: TFDS dataset {name} is not prepared (no "
        f"{version_dir}/dataset_info.json; data_dir: {shown}); prepare it "
        f"with `{_PREPARE} {task}`.")
  if state != "prepared":
    raise PreflightError(
        f"Task {task}: TFDS dataset {name} in {version_dir} is {state}; "
        f"delete that folder and prepare it again with `{_PREPARE} {task}`.")


class Checker:
  """Runs the checks, each distinct input once (a sweep shares most)."""

  def __init__(self):
    self._done: Set[Tuple[str, ...]] = set()

  def _once(self, *key: str) -> bool:
    if key in self._done:
      return False
    self._done.add(key)
    return True

  def check_task(self, mixture_or_task_name: str) -> None:
    """The vocabularies and TFDS data of a registered task or mixture."""
    if not self._once("task", mixture_or_task_name):
      return
    provider = registry.get(mixture_or_task_name)
    for task in seqio.get_subtasks(provider):
      for feature in task.output_features.values():
        vocabulary = feature.vocabulary
        if isinstance(vocabulary, seqio.SentencePieceVocabulary):
          path = vocabulary.sentencepiece_model_file
          if self._once("vocabulary", path):
            check_vocabulary(path)
      for dataset in prepare.tfds_datasets([task.name]):
        if self._once("tfds", dataset.name, dataset.data_dir or ""):
          check_tfds(dataset, task.name)

  def check_run(self, initial_checkpoint_path: str,
                mixture_or_task_name: str) -> None:
    """Everything a training run reads before its first step."""
    self.check_task(mixture_or_task_name)
    if self._once("checkpoint", initial_checkpoint_path or ""):
      check_checkpoint(initial_checkpoint_path)


def check_run(initial_checkpoint_path: str, mixture_or_task_name: str
              ) -> None:
  """`Checker().check_run`: one run's vocabulary, checkpoint and data.

  Raises:
    PreflightError: the first missing input, in one line.
    ValueError: no task or mixture of that name (one line).
  """
  Checker().check_run(initial_checkpoint_path, mixture_or_task_name)
