"""A library of saved prompts for one frozen model, by name.

Reads prompts in every format they are saved in and keeps them under names
(and, optionally, the task each one serves), checked against the frozen
model's width, so that one model can serve them all (`prompts.mixed`).
Formats `read_prompt` recognises:

- a `.npy` file (ours: `<run>/prompts/step_<N>.npy`, or `np.save` output);
- the official google-research/prompt-tuning numpy checkpoints: T5X's
  `numpy_checkpoints/checkpoint_<N>/encoder.prompt.prompt.prompt`, a
  `np.save` file without extension (their `Checkpointer.save_numpy` writes
  each prompt parameter under its '.'-joined tree path). The file itself, its
  `checkpoint_<N>` directory, or the model directory (newest step) work. A
  prompt saved with `save_dtype='bfloat16'` comes out of `np.save` as
  2-byte void data and is read as bfloat16 (`prompts.npy`, the reader
  `from_file` uses too);
- a Hugging Face PEFT prompt-tuning adapter directory (`prompts.peft`).

Our run directories (best or newest prompt) belong to the training layer's
checkpoint reader, one level up: `PromptLibrary.load` takes it as a
`read_run` function, so this module stays jax/numpy-only. Likewise a
`read_entry` function may read what adds more than an input prompt (a run
of deep prompts, prefixes, IA3 or LoRA; a PEFT LoRA/IA3/prefix adapter):
such an entry carries its `AdapterConfig` and parameters, which mixed
serving runs per example (`prompts.adapter_bank`). Files are read
with `allow_pickle=False`: a prompt may come from anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence
from typing import Tuple, Union

import numpy as np

from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.prompts import mixed
from prompt_tuning.prompts import npy
from prompt_tuning.prompts import peft

# The official repo's file name for an encoder-decoder model's prompt.
OFFICIAL_FILE = "encoder.prompt.prompt.prompt"
OFFICIAL_DIR = "numpy_checkpoints"

# path -> [P, H] float32; for run directories.
RunReader = Callable[[str], np.ndarray]
# (path, task) -> (input prompt [P, H] (P may be 0), its adapters, their
# parameters by '/'-joined unscanned model name), or None: not such an entry.
EntryReader = Callable[[str, str], Optional[
    Tuple[np.ndarray, AdapterConfig, Mapping[str, np.ndarray]]]]


class UnknownPrompt(KeyError):
  """A prompt or task the library does not have (prints as one line)."""

  def __str__(self) -> str:
    return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class LibraryPrompt:
  """One named prompt of a library."""

  # The name rows and commands use.
  name: str
  # float32 [P, H].
  value: np.ndarray
  # Where it was read from (the resolved file or directory).
  source: str
  # The task it serves ('' = none); a row that names this task gets it.
  task: str = ""
  # What it adds beyond the input prompt (all off for a prompt).
  adapters: AdapterConfig = AdapterConfig()
  # Their parameters: '/'-joined unscanned model name -> float32 array.
  params: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def length(self) -> int:
    return int(self.value.shape[0])

  @property
  def has_adapters(self) -> bool:
    return bool(self.params)


def read_npy(path: str) -> np.ndarray:
  """A prompt from an `np.save` file (any name, extension or not)."""
  return npy.read(path)


def _step(name: str) -> Optional[int]:
  match = re.fullmatch(r"checkpoint_(\d+)", name)
  return int(match.group(1)) if match else None


def official_file(path: str) -> Optional[str]:
  """The official-format prompt file `path` denotes, or None if it is not
  one (a `checkpoint_<N>` directory, or a model directory whose
  numpy_checkpoints/ has steps: the newest is taken)."""
  if os.path.isfile(os.path.join(path, OFFICIAL_FILE)):
    return os.path.join(path, OFFICIAL_FILE)
  numpy_dir = os.path.join(path, OFFICIAL_DIR)
  if not os.path.isdir(numpy_dir):
    return None
  steps = sorted((s, n) for n in os.listdir(numpy_dir)
                 if (s := _step(n)) is not None and
                 os.path.isfile(os.path.join(numpy_dir, n, OFFICIAL_FILE)))
  if not steps:
    raise FileNotFoundError(
        f"{numpy_dir} has no checkpoint_<N>/{OFFICIAL_FILE}; pass the prompt "
        "file itself.")
  return os.path.join(numpy_dir, steps[-1][1], OFFICIAL_FILE)


def read_prompt(path: str, read_run: Optional[RunReader] = None
                ) -> Tuple[np.ndarray, str]:
  """Reads a prompt saved in any known format.

  Args:
    path: a .npy / official prompt file, an official checkpoint or model
      directory, a PEFT adapter directory, or (with `read_run`) one of our
      run directories.
    read_run: reads a run directory; see the module docstring.

  Returns:
    (prompt float32 [P, H], the file or directory it came from).

  Raises:
    FileNotFoundError / ValueError: one line naming the path.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompt path {path} does not exist.")
  if os.path.isfile(path):
    return read_npy(path), path
  if peft.is_adapter(path):
    return peft.import_adapter(path), path
  official = official_file(path)
  if official is not None:
    return read_npy(official), official
  if read_run is not None and os.path.isdir(os.path.join(path, "prompts")):
    return npy.as_float32_prompt(read_run(path), path), path
  raise ValueError(
      f"{path}: no prompt found; expected a .npy file, a run directory "
      f"(prompts/step_<N>.npy), a PEFT adapter ({peft.CONFIG_FILE}) or an "
      f"official numpy checkpoint ({OFFICIAL_DIR}/checkpoint_<N>/"
      f"{OFFICIAL_FILE}).")


def parse_spec(spec: str) -> Tuple[str, str, str]:
  """'NAME=PATH' or 'NAME:TASK=PATH' -> (name, task, path)."""
  head, sep, path = spec.partition("=")
  name, _, task = head.partition(":")
  if not sep or not name.strip() or not path.strip():
    raise ValueError(f"Prompt spec {spec!r} is not NAME=PATH or "
                     "NAME:TASK=PATH.")
  return name.strip(), task.strip(), path.strip()


class PromptLibrary:
  """Named prompts of one width, in a fixed order (their bank index)."""

  def __init__(self, prompts: Iterable[LibraryPrompt],
               embed_dim: Optional[int] = None):
    """Checks names, widths and tasks.

    Args:
      prompts: the entries, in bank order.
      embed_dim: the frozen model's width H; None takes the first prompt's.

    Raises:
      ValueError: no prompts, a repeated name, two prompts for one task, or
        a prompt of another width (naming it and its source).
    """
    self._prompts: List[LibraryPrompt] = list(prompts)
    if not self._prompts:
      raise ValueError("A prompt library needs at least one prompt.")
    width = embed_dim if embed_dim is not None else int(
        self._prompts[0].value.shape[1])
    seen: Dict[str, str] = {}
    self._tasks: Dict[str, int] = {}
    for k, p in enumerate(self._prompts):
      if p.name in seen:
        raise ValueError(f"Prompt name {p.name!r} is used twice ({seen[p.name]}"
                         f" and {p.source}).")
      seen[p.name] = p.source
      if p.value.ndim != 2 or p.value.shape[1] != width:
        raise ValueError(
            f"Prompt {p.name!r} ({p.source}) has shape {tuple(p.value.shape)}"
            f" but the frozen model's width is {width}: it was trained for "
            "another model.")
      if p.task:
        if p.task in self._tasks:
          other = self._prompts[self._tasks[p.task]].name
          raise ValueError(f"Task {p.task!r} has two prompts, {other!r} and "
                           f"{p.name!r}; name the prompt in each row instead.")
        self._tasks[p.task] = k
    self.embed_dim = width
    self._index = {p.name: k for k, p in enumerate(self._prompts)}

  @classmethod
  def load(cls, specs: Union[Sequence[str], Mapping[str, str]],
           embed_dim: Optional[int] = None,
           read_run: Optional[RunReader] = None,
           read_entry: Optional[EntryReader] = None) -> "PromptLibrary":
    """Reads every prompt of `specs`.

    Args:
      specs: 'NAME=PATH' / 'NAME:TASK=PATH' strings, or {name: path}.
      embed_dim: the frozen model's width.
      read_run: reader for our run directories (see `read_prompt`).
      read_entry: reader for entries with adapters, tried first (see the
        module docstring); the task selects a multitask run's prompt.
    """
    if isinstance(specs, Mapping):
      parsed = [(name, "", path) for name, path in specs.items()]
    else:
      parsed = [parse_spec(s) for s in specs]
    entries = []
    for name, task, path in parsed:
      read = read_entry(path, task) if read_entry is not None else None
      if read is not None:
        value, adapters, params = read
        entries.append(LibraryPrompt(name, np.asarray(value, np.float32),
                                     path, task, adapters, dict(params)))
        continue
      value, source = read_prompt(path, read_run)
      entries.append(LibraryPrompt(name, value, source, task))
    return cls(entries, embed_dim)

  @property
  def has_adapters(self) -> bool:
    """Whether any entry adds more than an input prompt."""
    return any(p.has_adapters for p in self._prompts)

  @property
  def names(self) -> Tuple[str, ...]:
    return tuple(p.name for p in self._prompts)

  def __len__(self) -> int:
    return len(self._prompts)

  def __getitem__(self, name: str) -> LibraryPrompt:
    return self._prompts[self.index(name)]

  def __iter__(self):
    return iter(self._prompts)

  def index(self, name: str) -> int:
    """The bank index of prompt `name`."""
    if name not in self._index:
      raise UnknownPrompt(f"No prompt named {name!r} in the library (has: "
                     f"{', '.join(self.names)}).")
    return self._index[name]

  def resolve(self, prompt: str = "", task: str = "") -> int:
    """The bank index for a row naming a prompt, or else a task (its
    prompt, or a prompt named like the task)."""
    if prompt:
      return self.index(prompt)
    if task in self._tasks:
      return self._tasks[task]
    if task in self._index:
      return self._index[task]
    raise UnknownPrompt(f"No prompt for task {task!r} in the library (tasks: "
                   f"{', '.join(sorted(self._tasks)) or 'none'}; names: "
                   f"{', '.join(self.names)}).")

  def bank(self) -> Tuple[np.ndarray, np.ndarray]:
    """(bank [K, P_max, H] float32, lengths [K] int32), in library order."""
    return mixed.stack_prompts([p.value for p in self._prompts])
