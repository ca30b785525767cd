"""Prompts as Hugging Face PEFT prompt-tuning adapters, both ways.

`export_adapter` writes what `peft.PeftModel.from_pretrained` loads onto the
Hugging Face T5 (or, with a `DecoderConfig`, the causal LM: task_type
CAUSAL_LM, the prompt before the whole input) of the same frozen model: `adapter_config.json`
(peft_type PROMPT_TUNING, task_type SEQ_2_SEQ_LM, one transformer submodule,
i.e. the encoder only, as in our model) and `adapter_model.safetensors`
holding `prompt_embeddings` [P, H]. PEFT's seq2seq prompt tuning prepends
the virtual tokens to the encoder's input embeddings and ones to its
attention mask: our `prefix` placement exactly. `import_adapter` reads such
a directory back as a [P, H] prompt, and also PEFT's own seq2seq default,
`num_transformer_submodules=2`: its table is [2P, H], of which PEFT (since
0.4.0) only ever uses the first P rows, prepended to the encoder input (the
other P are never read, so never trained). Neither needs torch: the tensor file
goes through the `safetensors` package's numpy API (a file-format library;
the one import here beyond jax/flax/numpy, since PEFT's format is that
file), and `adapter_model.bin` (a pickle) is refused, never loaded.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import safetensors
import safetensors.numpy

from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.prompts import npy

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
TENSOR = "prompt_embeddings"
# The PEFT release the format was checked against (tests load it there).
PEFT_VERSION = "0.21.2"


def is_adapter(path: str) -> bool:
  """True if `path` is a directory with a PEFT adapter config."""
  return os.path.isdir(path) and os.path.isfile(os.path.join(path,
                                                             CONFIG_FILE))


def _frozen_shape(config: Union[T5Config, DecoderConfig]
                  ) -> Tuple[str, int, int]:
  """(PEFT task type, layers, heads) as PEFT fills them in: a T5's encoder,
  a decoder-only LM's stack (CAUSAL_LM)."""
  if isinstance(config, DecoderConfig):
    return "CAUSAL_LM", config.num_layers, config.num_heads
  return "SEQ_2_SEQ_LM", config.num_encoder_layers, config.num_heads


def adapter_config(prompt_length: int,
                   config: Union[T5Config, DecoderConfig],
                   base_model_name_or_path: str = "") -> Dict[str, Any]:
  """The `adapter_config.json` of a prompt of `prompt_length` for `config`
  (a T5: heads and layers are the encoder's, as PEFT fills them in; a
  decoder-only LM: CAUSAL_LM, its stack's)."""
  task_type, num_layers, num_heads = _frozen_shape(config)
  return {
      "peft_type": "PROMPT_TUNING",
      "task_type": task_type,
      "num_virtual_tokens": int(prompt_length),
      "token_dim": int(config.emb_dim),
      # 1: a [P, H] table. PEFT's seq2seq default, 2, stores [2P, H] and
      # uses only its first P rows (the encoder's); 1 stores just those.
      "num_transformer_submodules": 1,
      "num_attention_heads": int(num_heads),
      "num_layers": int(num_layers),
      "prompt_tuning_init": "RANDOM",
      "prompt_tuning_init_text": None,
      "tokenizer_name_or_path": None,
      "tokenizer_kwargs": None,
      "base_model_name_or_path": base_model_name_or_path or None,
      "revision": None,
      "inference_mode": True,
      "auto_mapping": None,
      "modules_to_save": None,
      "peft_version": PEFT_VERSION,
  }


def _write_atomic_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def export_adapter(prompt: np.ndarray,
                   config: Union[T5Config, DecoderConfig], directory: str,
                   base_model_name_or_path: str = "") -> str:
  """Writes `prompt` [P, H] as a PEFT prompt-tuning adapter directory.

  Args:
    prompt: the prompt; stored as float32.
    config: the frozen model's config (its width must be H).
    directory: created if needed; existing adapter files are replaced.
    base_model_name_or_path: recorded for PEFT (e.g. the HF checkpoint
      directory the adapter belongs to); PEFT loads onto whatever base model
      it is given.

  Returns:
    The directory.
  """
  prompt = np.asarray(prompt, np.float32)
  if prompt.ndim != 2 or prompt.shape[1] != config.emb_dim:
    raise ValueError(
        f"A prompt for this model is [P, {config.emb_dim}]; got shape "
        f"{tuple(prompt.shape)}.")
  return write_adapter(directory, {TENSOR: prompt},
                       adapter_config(prompt.shape[0], config,
                                      base_model_name_or_path))


def write_adapter(directory: str, tensors: Mapping[str, np.ndarray],
                  config: Mapping[str, Any]) -> str:
  """Writes a PEFT adapter directory, as `save_pretrained` lays it out.

  Shared by every PEFT method here (`prompt_tuning.methods.peft_io` too):
  `adapter_model.safetensors` (metadata `{"format": "pt"}`, what
  transformers expects) and `adapter_config.json` (sorted keys, indent 2),
  each replaced atomically, tensors first so a config never describes
  tensors that are not there yet.

  Args:
    directory: created if needed.
    tensors: PEFT's names -> arrays (written contiguous, as given).
    config: the adapter_config.json contents.

  Returns:
    The directory.
  """
  os.makedirs(directory, exist_ok=True)
  weights = os.path.join(directory, WEIGHTS_FILE)
  tmp = f"{weights}.tmp-{os.getpid()}"
  try:
    safetensors.numpy.save_file(
        {name: np.ascontiguousarray(array) for name, array in tensors.items()},
        tmp, metadata={"format": "pt"})
    os.replace(tmp, weights)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
  _write_atomic_text(os.path.join(directory, CONFIG_FILE), text)
  return directory


def read_adapter_config(directory: str) -> Tuple[str, Dict[str, Any]]:
  """(path of adapter_config.json, its contents) of a PEFT adapter directory.

  Raises:
    FileNotFoundError / ValueError: one line naming the file.
  """
  config_file = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; a PEFT adapter "
                            "directory is what save_pretrained writes.")
  try:
    with open(config_file, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file} is not valid JSON ({e}).") from None
  if not isinstance(config, dict):
    raise ValueError(f"{config_file} is not a JSON object.")
  return config_file, config


def read_adapter_tensors(directory: str) -> Tuple[str, Dict[str, np.ndarray]]:
  """(path of adapter_model.safetensors, its tensors by name).

  The pickle PEFT may have written instead (`adapter_model.bin`) is refused,
  never loaded.

  Raises:
    FileNotFoundError / ValueError: one line naming the file.
  """
  weights = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.isfile(weights):
    if os.path.isfile(os.path.join(directory, PICKLE_FILE)):
      raise ValueError(
          f"{directory} has only {PICKLE_FILE}, a pickle that is never "
          "loaded here; re-save the adapter with save_pretrained("
          "safe_serialization=True).")
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE}.")
  try:
    with safetensors.safe_open(weights, framework="np") as f:
      tensors = {name: f.get_tensor(name) for name in f.keys()}
  except safetensors.SafetensorError as e:
    raise ValueError(f"{weights} is not a readable safetensors file "
                     f"({' '.join(str(e).split())}).") from None
  return weights, tensors


def _check_model(config_file: str, adapter: Dict[str, Any],
                 model: Union[T5Config, DecoderConfig]) -> None:
  """Heads and layers PEFT recorded (a T5 encoder's, or a decoder-only
  stack's) against the model's."""
  task_type, num_layers, num_heads = _frozen_shape(model)
  if adapter.get("task_type") not in (None, task_type):
    raise ValueError(
        f"{config_file}: task_type={adapter['task_type']} but the frozen "
        f"model takes {task_type} adapters.")
  layers = "encoder layers" if task_type == "SEQ_2_SEQ_LM" else "layers"
  for key, want, what in (
      ("num_attention_heads", num_heads, "attention heads"),
      ("num_layers", num_layers, layers)):
    if adapter.get(key) is not None and adapter[key] != want:
      raise ValueError(
          f"{config_file}: {key}={adapter[key]} but the frozen model has "
          f"{want} {what}: the adapter was trained for another model.")


# PEFT types whose adapter is a prompt table.
PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")


def import_adapter(directory: str, embed_dim: Optional[int] = None,
                   model: Optional[Union[T5Config, DecoderConfig]] = None
                   ) -> np.ndarray:
  """Reads a PEFT prompt-tuning (or P-tuning) adapter as a prompt.

  Args:
    directory: holds adapter_config.json and adapter_model.safetensors.
    embed_dim: if given, the frozen model's width the prompt must have.
    model: if given, the frozen model's config: the heads and layers the
      adapter config records must be its encoder's.

  Returns:
    float32 [P, H].

  Raises:
    ValueError / FileNotFoundError: one line naming the directory and what
      is wrong (another PEFT method, a pickle-only adapter, a shape that
      disagrees with the config).
  """
  config_file, config = read_adapter_config(directory)
  # PEFT saves a P-tuning adapter as its prompt encoder's output (the MLP or
  # LSTM is never saved): the same table as PROMPT_TUNING's, used the same
  # way, so it is a prompt here too.
  if config.get("peft_type") not in PROMPT_TYPES:
    raise ValueError(
        f"{config_file}: peft_type is {config.get('peft_type')!r}; only "
        f"{' and '.join(PROMPT_TYPES)} adapters are soft prompts (LORA, IA3 "
        f"and PREFIX_TUNING adapters import as run directories: pass "
        f"--checkpoint).")
  submodules = config.get("num_transformer_submodules") or 1
  if submodules not in (1, 2):
    raise ValueError(
        f"{config_file}: num_transformer_submodules={submodules}; a T5 "
        "prompt-tuning adapter has 1 or 2 (PEFT's seq2seq default).")
  weights, tensors = read_adapter_tensors(directory)
  if TENSOR not in tensors:
    raise ValueError(f"{weights} has no {TENSOR!r} tensor (found "
                     f"{sorted(tensors)[:5]}).")
  prompt = tensors[TENSOR]
  virtual = config.get("num_virtual_tokens")
  rows = virtual * submodules if isinstance(virtual, int) else virtual
  want = (rows, config.get("token_dim"))
  if prompt.ndim != 2 or tuple(prompt.shape) != want:
    raise ValueError(
        f"{weights}: {TENSOR} has shape {tuple(prompt.shape)} but "
        f"{CONFIG_FILE} says [num_virtual_tokens"
        f"{' * num_transformer_submodules' if submodules > 1 else ''}, "
        f"token_dim] = {list(want)}.")
  if submodules == 2:
    # PeftModelForSeq2SeqLM prepends prompts[:, :num_virtual_tokens] to the
    # encoder's input embeddings, in forward and in generate; the rest of
    # the table is never read.
    logging.info("%s: num_transformer_submodules=2, PEFT's seq2seq default: "
                 "using the first %d of its %d rows, the ones PEFT prepends "
                 "to the encoder input (it never reads the others).",
                 config_file, virtual, rows)
    prompt = prompt[:virtual]
  if embed_dim is not None and prompt.shape[1] != embed_dim:
    raise ValueError(
        f"{directory}: the adapter's token_dim {prompt.shape[1]} differs from "
        f"the frozen model's width {embed_dim}.")
  if model is not None:
    _check_model(config_file, config, model)
  return npy.as_float32_prompt(prompt, weights)
