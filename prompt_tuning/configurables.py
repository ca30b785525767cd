"""The one place where library objects are registered with gin.

Library modules never import gin; the entry points import this module, which
makes the run functions and config dataclasses configurable under short names
(`train`, `evaluate`, `infer`, `model_config`, `PromptConfig`,
`AdafactorConfig`, `TrainConfig`, `DecodeConfig`, `task_class_labels`) for
the files in `gin_configs/`. It also parses T5X-style command lines: `--gin_file`,
`--gin.KEY=VALUE`, `--gin_bindings`, `--gin_search_paths`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from typing import Optional, Sequence, Tuple

import gin

from prompt_tuning.models.config import PRESETS
from prompt_tuning.models.config import T5Config
from prompt_tuning.data import registry
from prompt_tuning.models.config import t5_config
from prompt_tuning.training import inference
from prompt_tuning.training import loop
from prompt_tuning.training import optimizers
from prompt_tuning.training import runs
from prompt_tuning.training import setup

# The repository's gin_configs/, searched after the user's paths.
DEFAULT_SEARCH_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


def model_config(name: str, dtype: str = "bfloat16",
                 param_dtype: str = "float32", scan_layers: bool = False,
                 remat_policy: str = "none",
                 attention_impl: str = "xla") -> T5Config:
  """A named T5 preset with the runtime knobs gin files set."""
  return t5_config(name, dtype=dtype, param_dtype=param_dtype,
                   scan_layers=scan_layers, remat_policy=remat_policy,
                   attention_impl=attention_impl)


def task_class_labels(task: str) -> Tuple[str, ...]:
  """The label words of a registered task or mixture (() if it has none).

  runs/prompt_tune.gin sets `CLASS_LABELS = @task_class_labels()` with
  `task_class_labels.task = %MIXTURE_OR_TASK_NAME`, so the class-label
  initialiser takes the run's labels by name; binding CLASS_LABELS to a list
  overrides it.
  """
  return registry.class_labels(task)


_REGISTERED = False


def register() -> None:
  """Registers the configurables (idempotent)."""
  global _REGISTERED
  if _REGISTERED:
    return
  gin.external_configurable(model_config, name="model_config")
  gin.external_configurable(loop.train, name="train")
  gin.external_configurable(runs.evaluate, name="evaluate")
  gin.external_configurable(runs.infer, name="infer")
  gin.external_configurable(setup.PromptConfig, name="PromptConfig")
  gin.external_configurable(optimizers.AdafactorConfig,
                            name="AdafactorConfig")
  gin.external_configurable(loop.TrainConfig, name="TrainConfig")
  gin.external_configurable(inference.DecodeConfig, name="DecodeConfig")
  gin.external_configurable(task_class_labels, name="task_class_labels")
  _REGISTERED = True


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.KEY=VALUE` -> `--gin_bindings=KEY = VALUE` (T5X's shorthand)."""
  out = []
  for arg in argv:
    match = re.match(r"^--gin\.([^=]+)=(.*)$", arg, re.DOTALL)
    out.append(f"--gin_bindings={match.group(1)} = {match.group(2)}"
               if match else arg)
  return out


class ConfigError(ValueError):
  """A gin file or binding the user got wrong (printed as one line)."""


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and bindings, then finalizes the config.

  Raises:
    ConfigError: a missing file or an unknown / malformed binding, in one
      line naming it (with close matches for a misspelt configurable).
  """
  register()
  for path in list(search_paths) + [DEFAULT_SEARCH_PATH]:
    gin.add_config_file_search_path(path)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                        finalize_config=False,
                                        skip_unknown=False)
  except IOError as e:
    raise ConfigError(f"gin file not found: {_one_line(e)} (searched "
                      f"{', '.join(list(search_paths) + ['gin_configs/'])})"
                      ) from None
  except (ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(_explain(e)) from None
  gin.finalize()


def check_bindings(gin_files: Sequence[str], bindings: Sequence[str],
                   search_paths: Sequence[str] = ()) -> str:
  """Parses a run's config as the CLI would, then forgets it.

  Besides everything `parse` checks, a macro that `bindings` set must be read
  somewhere (`%NAME`): gin would accept `TRAIN_STEPZ = 10` as a new macro
  that nothing reads. Used by the sweep command to check every run before
  the first one starts.

  Returns:
    The parsed config (`gin.config_str()`).

  Raises:
    ConfigError: as `parse`, or a macro nothing reads (with close matches).
  """
  root = logging.getLogger()
  level = root.level
  # gin logs each search path it tries and misses at ERROR level.
  root.setLevel(logging.CRITICAL)
  try:
    parse(gin_files, bindings, search_paths)
    text = gin.config_str()
  finally:
    root.setLevel(level)
    gin.clear_config()
  defined = set(re.findall(r"^([A-Z][A-Z0-9_]*) = ", text, re.M))
  read = set(re.findall(r"%([A-Za-z_][A-Za-z0-9_.]*)", text))
  for binding in bindings:
    match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", binding)
    if match and match.group(1) in defined and match.group(1) not in read:
      name = match.group(1)
      close = difflib.get_close_matches(name, sorted(defined - {name}), n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"Macro {name} is set ({binding.strip()!r}) but "
                        f"nothing reads it (no %{name} in the config).{hint}")
  return text


def _explain(error: Exception) -> str:
  message = _one_line(error)
  match = re.search(r"No configurable matching '([^']+)'", message)
  if match:
    known = [c.split(".")[-1] for c in _configurable_names()]
    close = difflib.get_close_matches(match.group(1).split(".")[-1], known,
                                      n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown gin configurable {match.group(1)!r}.{hint}"
  return f"Bad gin configuration: {message}"


def _configurable_names() -> Tuple[str, ...]:
  return ("model_config", "train", "evaluate", "infer", "PromptConfig",
          "AdafactorConfig", "TrainConfig", "DecodeConfig",
          "task_class_labels")


def macro(name: str) -> Optional[object]:
  """The value of a gin macro, or None when unset."""
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return None


def preset_names() -> Tuple[str, ...]:
  return tuple(sorted(PRESETS))
