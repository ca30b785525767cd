"""LoRA, IA3 and prefix adapters as Hugging Face PEFT directories, both ways.

Our adapter parameters sit next to the frozen weights they modify
(`models.adapters`); PEFT's sit in `adapter_model.safetensors` under the Hugging
Face module names (`base_model.model.encoder.block.0.layer.0.SelfAttention.q
.lora_A.weight` on T5, `base_model.model.model.layers.0.self_attn.q_proj
.lora_A.weight` on a decoder-only LM: `methods.peft_names`), with
`adapter_config.json` saying which modules were adapted and how. This module
translates between the two, in the layouts PEFT 0.21.2
(`prompts.peft.PEFT_VERSION`) writes for `T5ForConditionalGeneration` and
the causal LMs (task CAUSAL_LM; IA3's feed-forward module is then
`down_proj`, our `wo`): LoRA
`lora_a` [in, r] / `lora_b` [r, out] are PEFT's `lora_A.weight` /
`lora_B.weight` transposed; IA3 `ia3_scaling` is PEFT's `ia3_l` flattened
([out, 1] for k/v, [1, mlp] for the feed-forward `wo`); a PEFT prefix is one
[P, 2L * token_dim] table whose blocks feed the decoder's self-attention only,
layer i reading blocks (4i, 4i + 1) mod 2L (`prefix.peft_prefix_blocks`); its
reader and writer are `methods.peft_prefix`.

Importing reproduces PEFT's own module matching (`target_modules` as a list of
suffixes or one regular expression, `exclude_modules`, `layers_to_transform`,
`rank_pattern` / `alpha_pattern`) over the model's projections and turns the
result into targets our `AdapterConfig` accepts that select exactly the same
modules. Anything this model cannot reproduce (DoRA, LoRA biases, per-module
ranks, trainable tokens, modules_to_save, ...) is refused in one line naming
the adapter file and the fix, never silently dropped. Files go through
`prompts.peft` (safetensors via numpy; pickles refused), so no torch here.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from prompt_tuning.methods.peft_names import IA3
from prompt_tuning.methods.peft_names import LORA
from prompt_tuning.methods.peft_names import PeftNames
from prompt_tuning.methods.peft_names import SEQ_2_SEQ_LM as TASK_TYPE
from prompt_tuning.methods.peft_names import peft_names
from prompt_tuning.models import adapters as adapters_lib
from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.config import T5Config
from prompt_tuning.prompts import peft

# PEFT prefixes every saved name with the wrapper's path to the base model.
_STATE_PREFIX = "base_model.model."
# Inits that rewrite the base weights: the adapter only fits the rewritten
# model (PEFT converts them to plain LoRA when asked at save time).
_BASE_CHANGING_INITS = ("pissa", "olora", "loftq", "corda", "lora_ga")
# LoraConfig fields that change the forward pass in ways our model lacks,
# with PEFT's neutral value (absent counts as neutral; anything else is
# refused).
_LORA_REFUSED = (
    ("use_dora", False, "DoRA (a learned magnitude vector)"),
    ("lora_bias", False, "a bias on lora_B"),
    ("fan_in_fan_out", False, "Conv1D (fan_in_fan_out) weights"),
    ("bias", "none", "trainable base biases"),
    ("modules_to_save", None, "fully trained copies of modules"),
    ("trainable_token_indices", None, "trainable token embeddings"),
    ("target_parameters", None, "LoRA on raw parameters"),
    ("layer_replication", None, "replicated layers"),
    ("alora_invocation_tokens", None, "activated LoRA (aLoRA)"),
    ("use_qalora", False, "QALoRA"),
    ("velora_config", None, "VeLoRA"),
    ("monteclora_config", None, "MonteCLoRA"),
    ("megatron_config", None, "Megatron parallel layers"),
    ("use_bdlora", None, "block-diagonal LoRA"),
    ("arrow_config", None, "Arrow routing"),
    ("kasa_config", None, "KaSA"),
)


# ----------------------------------------------------------------------------
# Module tables and PEFT's matching rules.


def _selected_by_ours(targets: Sequence[str],
                      modules: Mapping[str, Any]) -> List[str]:
  """The projection paths our `targets` select (models.adapters' rule)."""
  return [p for p in modules if adapters_lib.matches(targets, p.split("/"))]


def _peft_matches(adapter: Mapping[str, Any], key: str,
                  targets: Any) -> bool:
  """PEFT's `check_target_module_exists` for one HF module name."""
  exclude = adapter.get("exclude_modules")
  if exclude:
    if isinstance(exclude, str):
      if re.fullmatch(exclude, key):
        return False
    elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
      return False
  if isinstance(targets, str):
    return bool(re.fullmatch(targets, key))
  if key in targets:
    return True
  if not any(key.endswith(f".{t}") for t in targets):
    return False
  layers = adapter.get("layers_to_transform")
  if layers is None or (isinstance(layers, list) and not layers):
    return True
  pattern = adapter.get("layers_pattern")
  match = None
  if not pattern:
    match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
  else:
    for p in [pattern] if isinstance(pattern, str) else pattern:
      match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
      if match is not None:
        break
  if match is None:
    return False
  index = int(match.group("idx"))
  return index == layers if isinstance(layers, int) else index in layers


def _peft_selection(file: str, adapter: Mapping[str, Any],
                    names: PeftNames, peft_type: str) -> List[str]:
  """Our paths of the projections PEFT adapts under `adapter`'s config."""
  modules = names.modules
  targets = adapter.get("target_modules")
  if targets is None:
    targets = names.default_targets[peft_type]
    if targets is None:
      raise ValueError(
          f"{file}: target_modules is unset, and PEFT's {peft_type} default "
          f"differs between {names.model} types; name the modules "
          f"(target_modules, and feedforward_modules for IA3).")
  elif isinstance(targets, str) and targets.lower() == "all-linear":
    targets = [name for name, _, _ in modules.values()]
  elif not isinstance(targets, (str, list)):
    raise ValueError(f"{file}: target_modules={targets!r} is neither a list "
                     "nor a regular expression.")
  try:
    selected = [path for path, (name, _, _) in modules.items()
                if _peft_matches(adapter, name, targets)]
  except (re.error, TypeError) as e:
    raise ValueError(f"{file}: target_modules / exclude_modules / "
                     f"layers_pattern cannot be matched ({e}).") from None
  if not selected:
    raise ValueError(
        f"{file}: target_modules={targets!r} selects none of this "
        f"{names.model}'s projections "
        f"({', '.join(dict.fromkeys(names.projection.values()))}): the "
        "adapter was made for another model.")
  return selected


def _ours_from_selection(selected: Sequence[str],
                         modules: Mapping[str, Any]) -> Tuple[str, ...]:
  """AdapterConfig targets that select exactly `selected`.

  A projection adapted everywhere it exists is named (`query`); one adapted
  only in some places gets one anchored, escaped path per place (only
  meaningful unscanned: under scan_layers the layers share one path).
  """
  chosen = set(selected)
  targets = []
  for name in adapters_lib.PROJECTIONS:
    paths = [p for p in modules if p.rsplit("/", 1)[1] == name]
    hit = [p for p in paths if p in chosen]
    if not hit:
      continue
    if len(hit) == len(paths):
      targets.append(name)
    else:
      targets.extend(re.escape(p) for p in hit)
  return tuple(targets)


def _peft_targets(targets: Sequence[str], selected: Sequence[str],
                  names: PeftNames) -> List[str]:
  """PEFT `target_modules` selecting exactly `selected`.

  Plain projection names become PEFT's suffixes (`query` -> `q`, or
  `q_proj`); anything with a regular expression becomes the list of full
  module names (PEFT matches a list entry equal to the whole name).
  """
  if all("/" not in t for t in targets):
    return sorted({names.projection[t] for t in targets})
  return sorted(names.modules[p][0] for p in selected)


def _check_selection(what: str, peft_config: Mapping[str, Any],
                     selected: Sequence[str],
                     modules: Mapping[str, Tuple[str, int, int]]) -> None:
  """The config we write must select in PEFT what ours selects (invariant)."""
  again = [p for p, (name, _, _) in modules.items()
           if _peft_matches(peft_config, name, peft_config["target_modules"])]
  if sorted(again) != sorted(selected):
    raise AssertionError(f"{what}: PEFT's target_modules would select "
                         f"{sorted(again)}, ours {sorted(selected)}.")


def check_common(file: str, adapter: Mapping[str, Any],
                  peft_type: str, task_type: str = TASK_TYPE) -> None:
  found = adapter.get("peft_type")
  if found != peft_type:
    readers = {LORA: "import_lora", IA3: "import_ia3",
               "PREFIX_TUNING": "peft_prefix.import_prefix",
               "PROMPT_TUNING": "prompts.peft.import_adapter",
               "MULTITASK_PROMPT_TUNING": "peft_multitask.import_mpt"}
    fix = (f"read it with {readers[found]}" if found in readers else
           f"this model reads only {', '.join(readers)} adapters")
    raise ValueError(f"{file}: peft_type is {found!r}, not {peft_type}; "
                     f"{fix}.")
  task = adapter.get("task_type")
  if task not in (task_type, None):
    model = ("this T5 reads only SEQ_2_SEQ_LM adapters "
             "(T5ForConditionalGeneration's)" if task_type == TASK_TYPE else
             f"this decoder-only LM reads only {task_type} adapters")
    raise ValueError(f"{file}: task_type is {task!r}; {model}.")
  if adapter.get("modules_to_save"):
    raise ValueError(
        f"{file}: modules_to_save={adapter['modules_to_save']!r} trains whole "
        "copies of base modules, which this frozen model cannot hold; "
        "retrain without modules_to_save.")


def read(directory: str) -> Tuple[str, Dict[str, Any], str,
                                   Dict[str, np.ndarray]]:
  config_file, adapter = peft.read_adapter_config(directory)
  return (config_file, adapter) + peft.read_adapter_tensors(directory)


def base_config(peft_type: str, base_model_name_or_path: Optional[str],
                task_type: str = TASK_TYPE) -> Dict[str, Any]:
  return {"peft_type": peft_type, "task_type": task_type,
          "auto_mapping": None, "base_model_name_or_path":
              base_model_name_or_path or None,
          "revision": None, "inference_mode": True, "modules_to_save": None,
          "peft_version": peft.PEFT_VERSION}


def _check_names(found: Mapping[str, Any], want: Set[str], what: str,
                 fix: str) -> None:
  missing = sorted(want - set(found))
  unknown = sorted(set(found) - want)
  if missing or unknown:
    raise ValueError(
        f"{what}: missing {missing[:2]}, unexpected {unknown[:2]} "
        f"({len(missing)} / {len(unknown)} in all); {fix}")


def check_param_names(params: Mapping[str, Any], want: Set[str]) -> None:
  _check_names(params, want, "The adapter params do not match the targets",
               "pass only the adapter's parameters, unscanned, with the "
               "targets they were built with.")


def check_shape(name: str, array: np.ndarray, want: Tuple[int, ...],
                 where: str) -> np.ndarray:
  array = np.asarray(array)
  if tuple(array.shape) != tuple(want):
    raise ValueError(f"{where}: {name} has shape {tuple(array.shape)} but "
                     f"this model needs {tuple(want)}: the adapter was made "
                     "for another model.")
  return array.astype(np.float32)


def _check_tensor_names(weights: str, tensors: Mapping[str, Any],
                        want: Set[str]) -> None:
  _check_names(tensors, want, f"{weights}: tensors do not match "
               "adapter_config.json's targets on this model",
               "was it made for another model?")


def _number(x: float):
  """An int when integral: PEFT types lora_alpha as int."""
  return int(x) if float(x).is_integer() else float(x)


# ----------------------------------------------------------------------------
# LoRA.


def _export_selection(what: str, targets: Sequence[str], config: T5Config,
                      params: Mapping[str, Any], leaves: Sequence[str]
                      ) -> Tuple[PeftNames, List[str]]:
  """(the model's PEFT names, the projections `targets` select), checking
  that `params` holds exactly `<projection>/<leaf>` for each selected one."""
  names = peft_names(config)
  selected = _selected_by_ours(targets, names.modules)
  if not selected:
    raise ValueError(f"{what} targets {tuple(targets)} select no projection "
                     "of this model.")
  check_param_names(params, {f"{p}/{n}" for p in selected for n in leaves})
  return names, selected


def export_lora(params: Mapping[str, np.ndarray], config: T5Config,
                directory: str, *, rank: int, alpha: float,
                rslora: bool = False, dropout: float = 0.0,
                targets: Sequence[str],
                base_model_name_or_path: Optional[str] = None) -> str:
  """Writes LoRA parameters as a PEFT LORA adapter directory.

  Args:
    params: '/'-joined unscanned names -> arrays: exactly the
      `<projection>/lora_a` [in, r] and `lora_b` [r, out] of the projections
      `targets` select.
    config: the frozen model's config.
    directory: created if needed; adapter files there are replaced.
    rank, alpha, rslora, dropout, targets: the AdapterConfig's lora_* fields.
    base_model_name_or_path: recorded for PEFT.

  Returns:
    The directory.
  """
  names, selected = _export_selection("LoRA", targets, config, params,
                                      ("lora_a", "lora_b"))
  modules = names.modules
  tensors = {}
  for path in selected:
    name, d_in, d_out = modules[path]
    a = check_shape(f"{path}/lora_a", params[f"{path}/lora_a"],
                     (d_in, rank), "export_lora")
    b = check_shape(f"{path}/lora_b", params[f"{path}/lora_b"],
                     (rank, d_out), "export_lora")
    tensors[f"{_STATE_PREFIX}{name}.lora_A.weight"] = a.T  # [r, in]
    tensors[f"{_STATE_PREFIX}{name}.lora_B.weight"] = b.T  # [out, r]
  adapter = base_config(LORA, base_model_name_or_path, names.task_type)
  adapter.update({
      "r": int(rank), "lora_alpha": _number(alpha),
      "lora_dropout": float(dropout), "use_rslora": bool(rslora),
      "target_modules": _peft_targets(targets, selected, names),
      "exclude_modules": None, "bias": "none", "fan_in_fan_out": False,
      "init_lora_weights": True, "layers_to_transform": None,
      "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
      "use_dora": False, "lora_bias": False,
      "trainable_token_indices": None, "target_parameters": None,
      "layer_replication": None})
  _check_selection("export_lora", adapter, selected, modules)
  return peft.write_adapter(directory, tensors, adapter)


def _lora_rank_alpha(file: str, adapter: Mapping[str, Any],
                     selected: Sequence[str],
                     modules: Mapping[str, Tuple[str, int, int]]
                     ) -> Tuple[int, float]:
  """The one (r, alpha) of every adapted module (PEFT's rank/alpha_pattern)."""
  ranks = adapter.get("rank_pattern") or {}
  alphas = adapter.get("alpha_pattern") or {}

  def pattern_key(keys, name):  # PEFT's get_pattern_key
    return next((k for k in keys if re.match(rf"(.*\.)?({k})$", name)), name)

  pairs = set()
  for path in selected:
    name = modules[path][0]
    pairs.add((ranks.get(pattern_key(ranks, name), adapter.get("r", 8)),
               alphas.get(pattern_key(alphas, name),
                          adapter.get("lora_alpha", 8))))
  if len(pairs) != 1:
    raise ValueError(
        f"{file}: rank_pattern/alpha_pattern give the adapted modules "
        f"different (r, alpha) {sorted(pairs)}; this model has one LoRA rank "
        "and alpha: retrain with a single r and lora_alpha.")
  return pairs.pop()


def import_lora(directory: str, config: T5Config
                ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """Reads a PEFT LORA adapter for the frozen model `config`.

  Returns:
    (options, params): options {'peft_type': 'LORA', 'rank', 'alpha',
    'rslora', 'dropout', 'targets'} (`to_adapter_config` turns them into an
    AdapterConfig whose targets select exactly the modules PEFT adapted);
    params '/'-joined unscanned names -> float32 `lora_a` [in, r], `lora_b`
    [r, out].

  Raises:
    ValueError / FileNotFoundError: one line naming the adapter file and the
      fix, for anything this model cannot reproduce.
  """
  config_file, adapter, weights, tensors = read(directory)
  names = peft_names(config)
  check_common(config_file, adapter, LORA, names.task_type)
  for field, neutral, what in _LORA_REFUSED:
    value = adapter.get(field, neutral)
    if value != neutral and not (neutral is None and value in ([], {})):
      raise ValueError(f"{config_file}: {field}={value!r} asks for {what}, "
                       "which this model does not have; retrain with "
                       f"{field}={neutral!r}.")
  init = adapter.get("init_lora_weights", True)
  if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
    raise ValueError(
        f"{config_file}: init_lora_weights={init!r} rewrites the base "
        "weights, so the adapter only fits the rewritten model; save it with "
        "save_pretrained(path_initial_model_for_weight_conversion=...) to get "
        "a plain LoRA.")
  modules = names.modules
  selected = _peft_selection(config_file, adapter, names, LORA)
  rank, alpha = _lora_rank_alpha(config_file, adapter, selected, modules)
  if not isinstance(rank, int) or rank < 1:
    raise ValueError(f"{config_file}: r={rank!r} is not a positive rank.")
  _check_tensor_names(weights, tensors, {
      f"{_STATE_PREFIX}{modules[p][0]}.lora_{ab}.weight"
      for p in selected for ab in "AB"})
  params = {}
  for path in selected:
    name, d_in, d_out = modules[path]
    a = check_shape(f"{name}.lora_A.weight",
                     tensors[f"{_STATE_PREFIX}{name}.lora_A.weight"],
                     (rank, d_in), weights)
    b = check_shape(f"{name}.lora_B.weight",
                     tensors[f"{_STATE_PREFIX}{name}.lora_B.weight"],
                     (d_out, rank), weights)
    params[f"{path}/lora_a"] = np.ascontiguousarray(a.T)  # [in, r]
    params[f"{path}/lora_b"] = np.ascontiguousarray(b.T)  # [r, out]
  options = {"peft_type": LORA, "rank": rank, "alpha": float(alpha),
             "rslora": bool(adapter.get("use_rslora", False)),
             "dropout": float(adapter.get("lora_dropout", 0.0) or 0.0),
             "targets": _ours_from_selection(selected, modules)}
  return options, params


# ----------------------------------------------------------------------------
# IA3.


def _is_feedforward(path: str) -> bool:
  """Our IA3 scales `wo`'s input and every other projection's output."""
  return path.rsplit("/", 1)[1] == "wo"


def export_ia3(params: Mapping[str, np.ndarray], config: T5Config,
               directory: str, *, targets: Sequence[str],
               base_model_name_or_path: Optional[str] = None) -> str:
  """Writes IA3 scalings as a PEFT IA3 adapter directory.

  Args:
    params: '/'-joined unscanned names -> arrays: exactly the
      `<projection>/ia3_scaling` of the projections `targets` select
      ([mlp] for `wo`, [out] otherwise).
    config: the frozen model's config.
    directory: created if needed; adapter files there are replaced.
    targets: the AdapterConfig's ia3_targets.
    base_model_name_or_path: recorded for PEFT.

  Returns:
    The directory.
  """
  names, selected = _export_selection("IA3", targets, config, params,
                                      ("ia3_scaling",))
  modules = names.modules
  tensors = {}
  for path in selected:
    name, d_in, d_out = modules[path]
    ff = _is_feedforward(path)
    vector = check_shape(f"{path}/ia3_scaling", params[f"{path}/ia3_scaling"],
                          (d_in if ff else d_out,), "export_ia3")
    # PEFT: [1, in] scales a feed-forward module's input, [out, 1] the output.
    tensors[f"{_STATE_PREFIX}{name}.ia3_l"] = (
        vector[None, :] if ff else vector[:, None])
  target_modules = _peft_targets(targets, selected, names)
  if all("/" not in t for t in targets):
    feedforward = [names.projection["wo"]] if "wo" in targets else []
  else:
    feedforward = sorted(modules[p][0] for p in selected
                         if _is_feedforward(p))
  adapter = base_config(IA3, base_model_name_or_path, names.task_type)
  adapter.update({"target_modules": target_modules,
                  "feedforward_modules": feedforward,
                  "exclude_modules": None, "fan_in_fan_out": False,
                  "init_ia3_weights": True})
  _check_selection("export_ia3", adapter, selected, modules)
  return peft.write_adapter(directory, tensors, adapter)


def import_ia3(directory: str, config: T5Config
               ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """Reads a PEFT IA3 adapter for the frozen model `config`.

  Returns:
    (options, params): options {'peft_type': 'IA3', 'targets'}; params
    '/'-joined unscanned names -> float32 `ia3_scaling` ([mlp] for `wo`,
    [out] otherwise).

  Raises:
    ValueError / FileNotFoundError: one line naming the adapter file and the
      fix, for anything this model cannot reproduce.
  """
  config_file, adapter, weights, tensors = read(directory)
  names = peft_names(config)
  check_common(config_file, adapter, IA3, names.task_type)
  if adapter.get("fan_in_fan_out"):
    raise ValueError(f"{config_file}: fan_in_fan_out=true is for Conv1D "
                     f"weights, which this {names.model} does not have; "
                     "retrain with false.")
  modules = names.modules
  selected = _peft_selection(config_file, adapter, names, IA3)
  feedforward = adapter.get("feedforward_modules")
  if feedforward is None:
    feedforward = names.default_feedforward
  if feedforward is None:
    raise ValueError(
        f"{config_file}: feedforward_modules is unset, and PEFT's default "
        f"differs between {names.model} types; name them (down_proj).")
  for path in selected:
    name = modules[path][0]
    # PEFT's IA3Model._check_target_module_feedforward.
    ff = (bool(re.fullmatch(feedforward, name)) if isinstance(feedforward, str)
          else any(name.endswith(t) for t in feedforward))
    if ff != _is_feedforward(path):
      raise ValueError(
          f"{config_file}: IA3 scales the {'input' if ff else 'output'} of "
          f"{name}; this model scales {names.projection['wo']}'s input and "
          "every other projection's output: make feedforward_modules exactly "
          f"the {names.projection['wo']} modules.")
  _check_tensor_names(weights, tensors, {
      f"{_STATE_PREFIX}{modules[p][0]}.ia3_l" for p in selected})
  params = {}
  for path in selected:
    name, d_in, d_out = modules[path]
    ff = _is_feedforward(path)
    vector = check_shape(f"{name}.ia3_l",
                          tensors[f"{_STATE_PREFIX}{name}.ia3_l"],
                          (1, d_in) if ff else (d_out, 1), weights)
    params[f"{path}/ia3_scaling"] = vector.reshape(-1)
  return ({"peft_type": IA3,
           "targets": _ours_from_selection(selected, modules)}, params)


def to_adapter_config(options: Mapping[str, Any]) -> AdapterConfig:
  """The AdapterConfig an importer's options describe (other hooks off)."""
  kind = options["peft_type"]
  if kind == LORA:
    return AdapterConfig(lora_rank=options["rank"],
                         lora_alpha=options["alpha"],
                         lora_rslora=options["rslora"],
                         lora_dropout=options["dropout"],
                         lora_targets=tuple(options["targets"]))
  if kind == IA3:
    return AdapterConfig(ia3_targets=tuple(options["targets"]))
  if kind == "PREFIX_TUNING":
    return AdapterConfig(prefix_length=options["length"],
                         prefix_attentions=tuple(options["attentions"]))
  raise ValueError(f"No adapter hooks for peft_type {kind!r}.")
