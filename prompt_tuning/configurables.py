"""The one place where library objects are registered with gin.

Library modules never import gin; the entry points import this module, which
makes the run functions and config dataclasses configurable under short names
(`train`, `evaluate`, `infer`, `model_config`, `PromptConfig`, the methods'
`DeepPromptConfig`, `PrefixConfig`, `PTuningConfig`,
`MultitaskPromptConfig`, `IA3Config`,
`LoraConfig`, `AdafactorConfig`, `TrainConfig`, `DecodeConfig`, `task_class_labels`) for
the files in `gin_configs/`. It also parses T5X-style command lines: `--gin_file`,
`--gin.KEY=VALUE`, `--gin_bindings`, `--gin_search_paths`, and refuses what
gin itself would accept silently: a command-line macro nothing reads
(`TRAIN_STEPZ = 10` is a new macro to gin) and a binding of a configurable
the command never calls, each with the nearest real name. The CLI and the
sweep command check through this one code path.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import inspect
import logging
import os
import re
import tokenize
from typing import Any, Dict, Optional, Sequence, Tuple

import gin

from prompt_tuning import gin_types
from prompt_tuning import methods
from prompt_tuning.models.config import PRESETS
from prompt_tuning.models.config import T5Config
from prompt_tuning.data import registry
from prompt_tuning.models.config import t5_config
from prompt_tuning.models.decoder_only import DecoderConfig
from prompt_tuning.models.decoder_only import decoder_config
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


def decoder_model_config(name: str, dtype: str = "bfloat16",
                         param_dtype: str = "float32",
                         remat_policy: str = "none") -> DecoderConfig:
  """A named decoder-only preset (`models.decoder_only.PRESETS`, e.g.
  'qwen2_5_0_5b'): the run checks that its checkpoint's config.json is
  this architecture, so a sweep's size axis cannot mix up checkpoints. The
  run takes its dtype and remat_policy."""
  return decoder_config(name, dtype=dtype, param_dtype=param_dtype,
                        remat_policy=remat_policy)


def task_class_labels(task: str) -> Tuple[str, ...]:
  """The label words of a registered task or mixture (() if it has none).

  runs/prompt_tune.gin sets `CLASS_LABELS = @task_class_labels()` with
  `task_class_labels.task = %MIXTURE_OR_TASK_NAME`, so the class-label
  initialiser takes the run's labels by name; binding CLASS_LABELS to a list
  overrides it.
  """
  return registry.class_labels(task)


# Adafactor learning rates per method for `method_learning_rate`: the paper's
# 0.3 for prompts; for the others the rate that trained the quickstart best
# in a small search (100 steps; docs/training.md), a starting point to sweep.
METHOD_LEARNING_RATES = {"prompt": 0.3, "deep_prompt": 0.3, "prefix": 0.01,
                         "multitask_prompt": 0.3,
                         "p_tuning": 0.01, "ia3": 0.03, "lora": 1e-3,
                         "model": 1e-3}


def method_learning_rate(method: str) -> float:
  """The default Adafactor learning rate of a method (METHOD_LEARNING_RATES).

  runs/prompt_tune.gin binds `AdafactorConfig.learning_rate =
  @method_learning_rate()` with `method_learning_rate.method = %METHOD`, so
  `--gin.METHOD=lora` alone trains at LoRA's rate; binding
  AdafactorConfig.learning_rate to a number overrides it.
  """
  if method not in METHOD_LEARNING_RATES:
    setup.make_method(method, setup.PromptConfig())  # the one-line error
  return METHOD_LEARNING_RATES[method]


_REGISTERED = False
# Gin name -> the library object it configures.
_CONFIGURABLES = {
    "model_config": model_config,
    "decoder_model_config": decoder_model_config,
    "train": loop.train,
    "evaluate": runs.evaluate,
    "infer": runs.infer,
    "PromptConfig": setup.PromptConfig,
    "DeepPromptConfig": methods.DeepPromptConfig,
    "PrefixConfig": methods.PrefixConfig,
    "PTuningConfig": methods.PTuningConfig,
    "MultitaskPromptConfig": methods.MultitaskPromptConfig,
    "IA3Config": methods.IA3Config,
    "LoraConfig": methods.LoraConfig,
    "AdafactorConfig": optimizers.AdafactorConfig,
    "TrainConfig": loop.TrainConfig,
    "DecodeConfig": inference.DecodeConfig,
    "task_class_labels": task_class_labels,
    "method_learning_rate": method_learning_rate,
}


def register() -> None:
  """Registers the configurables (idempotent)."""
  global _REGISTERED
  if _REGISTERED:
    return
  for name, value in _CONFIGURABLES.items():
    gin.external_configurable(value, name=name)
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


@contextlib.contextmanager
def _quiet_search_misses():
  """gin logs, at ERROR, every search path a file is not in before it finds
  it: noise right above a real `error:` line, so it is held back here (a
  file found nowhere is still an error, raised as IOError)."""
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    root.setLevel(level)


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = (), entry: Optional[str] = None,
          also_read: Sequence[str] = ()) -> None:
  """Parses gin files and bindings, then finalizes the config.

  Args:
    gin_files, bindings, search_paths: as the CLI flags.
    entry: the configurable the command calls (e.g. 'train'); given, every
      binding in `bindings` must be read by this command (see
      `check_read`).
    also_read: macros the caller reads itself (the CLI's MODEL_DIR).

  Raises:
    ConfigError: a missing file, an unknown / malformed binding, or (with
      `entry`) one nothing reads, in one line naming it, with close matches.
  """
  register()
  for path in list(search_paths) + [DEFAULT_SEARCH_PATH]:
    gin.add_config_file_search_path(path)
  try:
    with _quiet_search_misses():
      gin.parse_config_files_and_bindings(list(gin_files), list(bindings),
                                          finalize_config=False,
                                          skip_unknown=False)
  except IOError as e:
    raise ConfigError(f"gin file not found: {_one_line(e)} (searched "
                      f"{', '.join(list(search_paths) + ['gin_configs/'])})"
                      ) from None
  except tokenize.TokenError:
    raise ConfigError(_bad_value(bindings, None)) from None
  except (ValueError, SyntaxError, TypeError) as e:
    raise ConfigError(_explain(e, bindings)) from None
  gin.finalize()
  try:
    gin_types.check(gin_types.typed_configurables(_CONFIGURABLES), gin_files,
                    bindings, list(search_paths) + [DEFAULT_SEARCH_PATH])
  except TypeError as e:
    raise ConfigError(str(e)) from None
  if entry is not None:
    check_read(gin.config_str(), bindings, entry, also_read)


def check_bindings(gin_files: Sequence[str], bindings: Sequence[str],
                   search_paths: Sequence[str] = (),
                   entry: str = "train",
                   read: Sequence[str] = ()) -> Dict[str, Any]:
  """Parses a run's config as the CLI would (`parse` with `entry`), then
  forgets it. Used by the sweep command to check every run before the first
  one starts.

  Args:
    gin_files, bindings, search_paths, entry: as `parse`.
    read: parameters to return, e.g. 'train.initial_checkpoint_path'.

  Returns:
    {parameter: the value it is bound to, macros resolved; None if unbound}
    for each parameter in `read`.

  Raises:
    ConfigError: as `parse`.
  """
  try:
    parse(gin_files, bindings, search_paths, entry=entry)
    return {key: _bound_value(key) for key in read}
  finally:
    gin.clear_config()


def _bound_value(key: str) -> Any:
  try:
    # A deep copy evaluates a %MACRO reference to the macro's value.
    return copy.deepcopy(gin.query_parameter(key))
  except ValueError:
    return None


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def check_read(config_text: str, bindings: Sequence[str], entry: str,
               also_read: Sequence[str] = ()) -> None:
  """Refuses a binding that nothing in this command reads.

  gin accepts `TRAIN_STEPZ = 10` as a new macro, and `evaluate.split = 'x'`
  in a train command as a binding of a function train never calls; both
  would be ignored. A macro is read if some binding says `%NAME` (or the
  caller reads it: `also_read`); a configurable is called if it is `entry`
  or some binding says `@name`.

  Raises:
    ConfigError: naming the binding and the nearest real name.
  """
  read = set(re.findall(r"%(" + _NAME + r")", config_text)) | set(also_read)
  read.discard("gin")
  called = {entry} | {ref.split("/")[-1].split(".")[-1] for ref in
                      re.findall(r"@([A-Za-z_][A-Za-z0-9_./]*)", config_text)}
  for binding in bindings:
    key = binding.split("=", 1)[0].strip()
    if not re.fullmatch(r"[A-Za-z0-9_./]+", key):
      continue
    if "." not in key and "/" not in key:
      if key not in read:
        close = difflib.get_close_matches(key, sorted(read), n=3)
        hint = (f" Did you mean {', '.join(close)}?" if close else
                " (macros this command reads: "
                f"{', '.join(sorted(n for n in read if n.isupper()))})")
        raise ConfigError(
            f"Macro {key} is set ({binding.strip()!r}) but nothing reads it "
            f"(no %{key} in the config), so it would be ignored.{hint}")
      continue
    configurable = key.rsplit(".", 1)[0].split("/")[-1].split(".")[-1]
    if configurable not in called:
      close = difflib.get_close_matches(configurable, sorted(called), n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(
          f"{key} is set ({binding.strip()!r}) but this command ({entry}) "
          f"never calls {configurable}, so it would be ignored.{hint} It "
          f"calls: {', '.join(sorted(called))}.")


def _bad_value(bindings: Sequence[str], token: Optional[str]) -> str:
  """A value gin cannot read, naming the binding it is in."""
  culprit = next((b for b in bindings if token is not None and
                  re.search(r"=.*\b" + re.escape(token) + r"\b", b)), None)
  if culprit is None and token is None:
    culprit = next((b for b in bindings if b.count("(") != b.count(")") or
                    b.count("[") != b.count("]") or
                    b.count("{") != b.count("}")), None)
  where = (f"--gin.{culprit.split('=', 1)[0].strip()}="
           f"{culprit.split('=', 1)[1].strip()}" if culprit else
           "a gin binding")
  what = (f"{token!r} is not a gin value" if token is not None else
          "its brackets or quotes do not close")
  return (f"{where}: {what}. A value is a number, True/False/None, a "
          f"'quoted string' (on a shell: --gin.NAME=\"'text'\"), a [list], "
          f"(tuple) or {{dict}}, @configurable() or %MACRO.")


def _file_line(message: str) -> str:
  """' (in FILE:LINE)' when gin's message says a gin file's line, else ''
  (a command-line binding names itself)."""
  match = re.search(r'In file "([^"]+)", line (\d+)', message)
  return f" (in {match.group(1)}:{match.group(2)})" if match else ""


def _explain(error: Exception, bindings: Sequence[str] = ()) -> str:
  message = _one_line(error)
  where = _file_line(message)
  match = re.search(r"No configurable matching '([^']+)'", message)
  if match:
    known = [c.split(".")[-1] for c in _configurable_names()]
    close = difflib.get_close_matches(match.group(1).split(".")[-1], known,
                                      n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"Unknown gin configurable {match.group(1)!r}{where}.{hint}"
  match = re.search(r"Configurable '([^']+)' doesn't have a parameter named "
                    r"'([^']+)'", message)
  if match:
    name, parameter = match.groups()
    fields = _parameters(name)
    close = difflib.get_close_matches(parameter, fields, n=3)
    hint = (f" Did you mean {', '.join(f'{name}.{c}' for c in close)}?"
            if close else f" Its parameters: {', '.join(fields)}.")
    return f"Unknown parameter {name}.{parameter}{where}.{hint}"
  match = re.search(r"Failed to parse token '([^']*)'", message)
  if match:
    return _bad_value(bindings, match.group(1))
  return f"Bad gin configuration: {message}"


def _parameters(name: str) -> list[str]:
  """The parameter names of a registered configurable (for close matches)."""
  value = _CONFIGURABLES.get(name.split(".")[-1])
  if value is None:
    return []
  return [p for p in inspect.signature(value).parameters
          if p not in ("self", "on_start")]


def _configurable_names() -> Tuple[str, ...]:
  return tuple(_CONFIGURABLES)


def macro(name: str) -> Optional[object]:
  """The value of a gin macro, or None when unset."""
  try:
    return gin.query_parameter(f"{name}/macro.value")
  except ValueError:
    return None


def preset_names() -> Tuple[str, ...]:
  return tuple(sorted(PRESETS))
