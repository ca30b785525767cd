"""A method's trainable tree as a Hugging Face PEFT adapter, both ways.

The bridge between a run (a `Method` and its trainable tree) and the
per-format readers and writers: LoRA and IA3 go through `peft_io`, prefix
tuning in PEFT's layout through `peft_prefix`, multitask prompts of mode
'mpt' through `peft_multitask` (PEFT numbers tasks: the run's task index
order is PEFT's task ids, and an imported adapter's tasks are named by the
caller in that order), and prompt tuning and P-tuning through `prompts.peft`
as PROMPT_TUNING of the (merged) prompt, which is what PEFT itself saves for
P-tuning. What PEFT cannot represent is refused in one line saying why
(`refusal`): deep prompts (PEFT has no per-layer encoder prompts), prefixes
in Li & Liang's layout (PEFT's table feeds only the decoder's
self-attention), multitask prompts of the other modes (PEFT's MPT is one
combination) and model tuning (not an adapter). On a decoder-only LM
(CAUSAL_LM) the same holds, and prefixes of either layout are PEFT's.
Trees are '/'-joined names -> arrays; scanned trees ([layers, ...]) are
unscanned for export and scanned again on import for a scanned model.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from prompt_tuning import methods
from prompt_tuning.methods import base
from prompt_tuning.methods import peft_io
from prompt_tuning.methods import peft_multitask
from prompt_tuning.methods import peft_prefix
from prompt_tuning.methods import prefix as prefix_lib
from prompt_tuning.models import T5
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only import DecoderConfig
from prompt_tuning.models.decoder_only import DecoderOnlyLM
from prompt_tuning.models.t5 import unscan_params
from prompt_tuning.prompts import peft

# PEFT types a run directory is made from (PROMPT_TUNING is a .npy prompt).
RUN_TYPES = (peft_io.LORA, peft_io.IA3, peft_prefix.PREFIX_TUNING,
             peft_multitask.MPT)
_LAYER_RE = re.compile(r"^(encoder|decoder)/layers_(\d+)/(.*)$")


def refusal(method: methods.Method,
            config: Optional[Any] = None) -> Optional[str]:
  """Why PEFT cannot hold `method`'s adapter on the frozen model `config`
  (None: any T5), or None when it can."""
  if isinstance(config, DecoderConfig) and isinstance(method,
                                                      methods.PrefixConfig):
    return None  # both layouts are PEFT's CAUSAL_LM table
  if isinstance(method, methods.DeepPromptConfig):
    return ("PEFT has no per-layer encoder prompts (its P-tuning v2 is "
            "prefix tuning: keys and values, not prompts); evaluate the run "
            "directory itself, or train METHOD = 'prefix' with "
            "PrefixConfig.layout = 'peft'")
  if isinstance(method, methods.PrefixConfig) and method.layout != "peft":
    return ("PEFT's PREFIX_TUNING feeds only the decoder's self-attention, "
            f"from one table of its own layout; {method.layout!r} prefixes "
            f"({', '.join(method.attentions)}) have no PEFT form: train with "
            "PrefixConfig.layout = 'peft'")
  if isinstance(method, methods.MultitaskPromptConfig):
    if method.mode != "mpt":
      return ("PEFT's MULTITASK_PROMPT_TUNING is only the 'mpt' combination "
              "(shared prompt * (U_t @ V_t)); a multitask prompt of mode "
              f"{method.mode!r} has no PEFT form: train "
              "MultitaskPromptConfig.mode = 'mpt'")
    if method.placement != "prefix":
      return ("PEFT prepends its MULTITASK_PROMPT_TUNING prompts to the "
              f"encoder input; a {method.placement!r} placement has no PEFT "
              "form: train with the prompt placement 'prefix'")
  if method.trains_everything:
    return ("model tuning changes every weight: there is no adapter; save "
            "the model itself (pretrained.hf_export)")
  if type(method) not in (methods.PromptTuning, methods.PTuningConfig,
                          methods.MultitaskPromptConfig, methods.LoraConfig,
                          methods.IA3Config, methods.PrefixConfig):
    return ("PEFT interchange here covers prompt, p_tuning, multitask_prompt "
            "(mode 'mpt'), lora, ia3 and prefix (layout 'peft') runs")
  return None


def export_run(method: methods.Method, trainable: Mapping[str, Any],
               config: T5Config, directory: str,
               base_model_name_or_path: Optional[str] = None) -> str:
  """Writes a run's trainable tree as a PEFT adapter directory.

  Args:
    method: the run's method (options only; bound here).
    trainable: '/'-joined names -> arrays, the run's trainable tree.
    config: the frozen model's config.
    directory: the adapter directory (created; adapter files replaced).
    base_model_name_or_path: recorded for PEFT.

  Returns:
    The PEFT type written (LORA, IA3, PREFIX_TUNING, MULTITASK_PROMPT_TUNING
    with num_transformer_submodules = 1 and the method's tasks as task ids
    0, 1, ..., or PROMPT_TUNING).

  Raises:
    ValueError: one line, for a method PEFT cannot represent, or a tree that
      does not fit `config`.
  """
  why = refusal(method, config)
  if why:
    raise ValueError(f"A {method.name} run cannot be a PEFT adapter: {why}.")
  config = _unscanned(config)
  method = method.bind(config)
  names = {k: np.asarray(v, np.float32)
           for k, v in unscan_params(dict(trainable)).items()}
  base_path = base_model_name_or_path
  if isinstance(method, methods.LoraConfig):
    peft_io.export_lora(names, config, directory, rank=method.rank,
                        alpha=method.alpha, rslora=method.rslora,
                        dropout=method.dropout, targets=method.targets,
                        base_model_name_or_path=base_path)
    return peft_io.LORA
  if isinstance(method, methods.IA3Config):
    peft_io.export_ia3(names, config, directory, targets=method.targets,
                       base_model_name_or_path=base_path)
    return peft_io.IA3
  if isinstance(method, methods.PrefixConfig):
    table = np.asarray(method.table(base.nested(names)), np.float32)
    peft_prefix.export_prefix(table, config, directory,
                              base_model_name_or_path=base_path)
    return peft_prefix.PREFIX_TUNING
  # Before PromptTuning: a multitask prompt is one, with a prompt per task.
  if isinstance(method, methods.MultitaskPromptConfig):
    peft_multitask.export_mpt(names, config, directory,
                              base_model_name_or_path=base_path)
    return peft_multitask.MPT
  if isinstance(method, methods.PromptTuning):
    prompt = np.asarray(method.input_prompt(base.nested(names)), np.float32)
    peft.export_adapter(prompt, config, directory, base_path or "")
    return "PROMPT_TUNING"
  raise ValueError(f"No PEFT form for METHOD = {method.name!r}.")


def peft_type(directory: str) -> Any:
  """The `peft_type` an adapter directory's config names."""
  return peft.read_adapter_config(directory)[1].get("peft_type")


def import_run(directory: str, config: T5Config, tasks: Sequence[str] = ()
               ) -> Tuple[methods.Method, Dict[str, np.ndarray]]:
  """Reads a PEFT LORA, IA3, PREFIX_TUNING or MULTITASK_PROMPT_TUNING adapter
  as a method and its trainable tree for the frozen model `config`.

  Args:
    directory: the adapter directory.
    config: the frozen model's config.
    tasks: an MPT adapter's task names in PEFT's task-id order, one per task
      (PEFT's files number tasks and name none); unused by the other types.

  Returns:
    (method, trainable): '/'-joined names -> float32 arrays, exactly the tree
    `setup.build_model` creates for that method on `config` (scanned if
    `config.scan_layers`).

  Raises:
    ValueError / FileNotFoundError: one line naming the adapter and the fix.
  """
  unscanned = _unscanned(config)
  kind = peft_type(directory)
  if kind == peft_io.LORA:
    options, names = peft_io.import_lora(directory, unscanned)
    method = methods.LoraConfig(rank=options["rank"], alpha=options["alpha"],
                                dropout=options["dropout"],
                                rslora=options["rslora"],
                                targets=options["targets"])
  elif kind == peft_io.IA3:
    options, names = peft_io.import_ia3(directory, unscanned)
    method = methods.IA3Config(targets=options["targets"])
  elif kind == peft_prefix.PREFIX_TUNING:
    options, table = peft_prefix.import_prefix(directory, unscanned)
    method = methods.PrefixConfig(length=options["length"], layout="peft")
    names = {f"{prefix_lib.PREFIX}/table": table}
  elif kind == peft_multitask.MPT:
    options, names = peft_multitask.import_mpt(directory, unscanned)
    count = options["num_tasks"]
    if len(tasks) != count:
      raise ValueError(
          f"{directory}: the MPT adapter has {count} tasks (PEFT's task ids "
          f"0..{count - 1}) but {len(tasks)} task names were given: name all "
          f"{count}, in task-id order (--tasks NAME,NAME,...).")
    method = methods.MultitaskPromptConfig(
        mode="mpt", length=options["length"], rank=options["rank"],
        tasks=tuple(tasks))
  else:
    raise ValueError(
        f"{directory}: peft_type is {kind!r}; a run directory is made from "
        f"{', '.join(RUN_TYPES)} adapters (PROMPT_TUNING becomes a .npy "
        f"prompt).")
  if getattr(config, "scan_layers", False):
    names = _scan(names)
  _check_tree(method, config, names, directory)
  return method, names


def _unscanned(config: Any) -> Any:
  """The config without scanned layers (decoder-only LMs have none)."""
  if isinstance(config, DecoderConfig):
    return config
  return config.replace(scan_layers=False)


def _scan(names: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """`<stack>/layers_<i>/<rest>` -> `<stack>/layers/<rest>` [layers, ...]."""
  out, layers = {}, {}
  for name, value in names.items():
    match = _LAYER_RE.match(name)
    if match is None:
      out[name] = value
      continue
    stack, i, rest = match.groups()
    layers.setdefault(f"{stack}/layers/{rest}", {})[int(i)] = value
  for name, by_layer in layers.items():
    out[name] = np.stack([by_layer[i] for i in sorted(by_layer)])
  return out


def _check_tree(method: methods.Method, config: T5Config,
                names: Mapping[str, np.ndarray], where: str) -> None:
  """The tree is exactly what the method trains on `config` (shapes only:
  nothing is computed), so the run directory it goes into is usable."""
  bound = method.bind(config)
  tokens = np.ones((1, 1), np.int32)
  if isinstance(config, DecoderConfig):
    adapted = config
    plain, hooked = (DecoderOnlyLM(config),
                     DecoderOnlyLM(config, bound.adapters(config)))
    args = (tokens,)
  else:
    adapted = config.replace(adapters=bound.adapters(config))
    plain, hooked = T5(config), T5(adapted)
    args = (tokens, tokens, tokens)

  def shapes(model):
    tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             *args)["params"])
    return {k: getattr(v, "value", v).shape
            for k, v in base.flat(tree).items()}

  want = base.trainable_shapes(bound, adapted, shapes(hooked), shapes(plain))
  got = {k: tuple(np.shape(v)) for k, v in names.items()}
  if got != want:
    wrong = sorted(set(got) ^ set(want)) or sorted(
        k for k in got if got[k] != want[k])
    raise ValueError(f"{where}: the adapter's {method.name} tree does not fit "
                     f"this model's (first difference: {wrong[0]!r}).")
