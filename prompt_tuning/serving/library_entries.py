"""Library entries that add more than a prompt, and their adapter bank.

`read_entry` reads, for one frozen model, what a prompt library entry adds
beyond an input prompt:

- a run directory of any method but model tuning (deep prompts, prefix
  tuning, IA3, LoRA, multitask prompts; `method.json` and the best, else
  newest, checkpoint, as evaluation reads it), reparameterisations merged;
  a multitask run gives the prompt of the entry's task (`NAME:TASK=RUN`);
- a Hugging Face PEFT LORA, IA3 or PREFIX_TUNING adapter directory (an MPT
  one numbers its tasks: it is refused, to be imported as a run first).

Prompt and P-tuning run directories and prompt files stay plain prompts
(`prompts.library` reads them). `build_bank` pads and stacks the entries'
adapters for the per-example model (`prompts.adapter_bank`), after checking
each against the parameters its own method gives this frozen model.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import jax
import numpy as np

from prompt_tuning import methods
from prompt_tuning.methods import base
from prompt_tuning.methods import peft_adapters
from prompt_tuning.methods import peft_multitask
from prompt_tuning.methods.prompt import PROMPT_PATH
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import T5
from prompt_tuning.models.t5 import unscan_params
from prompt_tuning.prompts import adapter_bank
from prompt_tuning.prompts import peft
from prompt_tuning.prompts.library import PromptLibrary
from prompt_tuning.training import runs

Entry = Tuple[np.ndarray, AdapterConfig, Dict[str, np.ndarray]]
PROMPT_NAME = "/".join(PROMPT_PATH)


def read_entry(path: str, task: str, config: T5Config) -> Optional[Entry]:
  """(input prompt [P, H] (P may be 0), adapters, their parameters) of a
  run or PEFT adapter at `path`, or None when `path` is a plain prompt.

  Raises:
    ValueError / FileNotFoundError: one line (model tuning, a multitask run
      without the entry's task, a checkpoint that cannot be read).
  """
  saved = runs.find_run(path)
  if saved is not None and (saved.step is not None or saved.method.name
                            not in runs.PROMPT_EXPORTED):
    if saved.method.trains_everything:
      raise ValueError(
          f"{path}: a model-tuning run changes every weight, so it cannot "
          "share the frozen model with other entries; serve it as its own "
          "model (prompt_tools infer with its checkpoint).")
    trainable, _ = runs.restore_trainable(saved)
    trainable = jax.tree_util.tree_map(np.asarray, trainable)
    return _split(saved.method, trainable, task, config, path)
  kind = (peft_adapters.peft_type(path)
          if saved is None and peft.is_adapter(path) else None)
  if kind == peft_multitask.MPT:
    raise ValueError(
        f"{path}: a PEFT MPT adapter numbers its tasks; import it as a run "
        "first (prompt_tools import-peft --adapter DIR --output RUN --tasks "
        "NAME,...) and serve NAME:TASK=RUN.")
  if kind in peft_adapters.RUN_TYPES:
    method, names = peft_adapters.import_run(path,
                                             config.replace(scan_layers=False))
    return _split(method, base.nested(names), task, config, path)
  return None


def _split(method: methods.Method, trainable, task: str, config: T5Config,
           where: str) -> Entry:
  """A trained method -> (input prompt, adapters, unscanned model params)."""
  method = method.bind(config)
  adapters = method.adapters(config)
  names = {k: np.asarray(v, np.float32)
           for k, v in base.flat(method.model_params(trainable)).items()}
  names = unscan_params(names)
  prompt = names.pop(PROMPT_NAME, None)
  if isinstance(method, methods.MultitaskPromptConfig):
    index = method.task_index()
    if not task and len(index) == 1:
      task = next(iter(index))
    if task not in index:
      raise ValueError(
          f"{where} is a multitask run over {', '.join(index)}: name the "
          f"entry's task, as NAME:TASK={where}.")
    prompt = np.asarray(method.prompts(
        trainable, np.array([index[task]], np.int32))[0], np.float32)
  if prompt is None:
    prompt = np.zeros((0, config.emb_dim), np.float32)
  return prompt, adapters, names


@functools.lru_cache(maxsize=None)
def _hook_shapes(config: T5Config) -> Dict[str, Tuple[int, ...]]:
  """The adapter parameters `config`'s model has, less a per-example
  model's batch axis."""
  # Per-layer encoder prompts need as many positions as they replace.
  tokens = np.ones((1, 1 + config.adapters.layer_prompt_length), np.int32)
  tree = jax.eval_shape(lambda: T5(config).init(
      jax.random.PRNGKey(0), tokens, tokens, tokens)["params"])
  shapes = {k: tuple(getattr(v, "value", v).shape)
            for k, v in base.flat(tree).items()}
  return adapter_bank.hook_shapes(shapes, config.adapters.per_example)


def build_bank(library: PromptLibrary,
               config: T5Config) -> Optional[adapter_bank.AdapterBank]:
  """The library's adapter bank for the frozen model `config`, or None when
  every entry is a plain prompt (the plain model serves them)."""
  if not library.has_adapters:
    return None
  unscanned = config.replace(scan_layers=False)
  entries = [(p.adapters, p.params) for p in library]
  own = [_hook_shapes(unscanned.replace(adapters=a)) for a, _ in entries]
  union = adapter_bank.union_config(entries)
  bank = adapter_bank.AdapterBank.build(
      entries, _hook_shapes(config.replace(adapters=union)), own)
  return bank


def check_placement(bank: Optional[adapter_bank.AdapterBank],
                    placement: str) -> None:
  """Per-layer encoder prompts act on the first rows: prefix placement."""
  if bank is not None and bank.config.layer_prompt_length and (
      placement != "prefix"):
    raise ValueError(f"placement={placement!r}: the library has deep-prompt "
                     "entries, whose per-layer prompts sit on the first "
                     "rows; serve it with placement='prefix'.")


def entry_reader(config: T5Config):
  """`read_entry` for `PromptLibrary.load`, for the frozen model `config`."""
  return lambda path, task: read_entry(path, task, config)
