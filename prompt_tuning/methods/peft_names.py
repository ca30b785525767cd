"""The Hugging Face module names a PEFT LoRA or IA3 adapter uses, per family.

PEFT saves an adapter's tensors under the base model's module names and
fills in defaults by the base model's type. This module says, for a frozen
model's config, what `methods.peft_io` needs to read and write them:

- T5 (`T5ForConditionalGeneration`, task SEQ_2_SEQ_LM): modules such as
  `encoder.block.0.layer.0.SelfAttention.q`; PEFT's defaults for "t5".
- A decoder-only LM (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
  `Gemma2ForCausalLM`, ..., task CAUSAL_LM): `model.layers.0.self_attn.q_proj`,
  `model.layers.0.mlp.down_proj`. PEFT's LoRA default is q_proj and v_proj
  for every one of these types; its IA3 default differs between them
  (k_proj for Llama and Mistral, q_proj for Qwen2 and Gemma), which the
  config cannot tell apart, so an IA3 adapter must name its modules.

Our projection paths come from the loaders' parameter maps
(`pretrained.hf.param_map`, `pretrained.hf_decoder.param_map`), the one
table between the two naming schemes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.pretrained import hf
from prompt_tuning.pretrained import hf_decoder

LORA = "LORA"
IA3 = "IA3"
SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
CAUSAL_LM = "CAUSAL_LM"


@dataclasses.dataclass(frozen=True)
class PeftNames:
  """How PEFT names one frozen model's projections."""

  # PEFT's task_type for this model.
  task_type: str
  # The model, in error messages.
  model: str
  # Our projection name (`query`, ..., `wo`) -> PEFT's module suffix.
  projection: Mapping[str, str]
  # PEFT's target_modules when an adapter config has none (None: unknown).
  default_targets: Mapping[str, Optional[List[str]]]
  # PEFT's IA3 feedforward_modules when a config has none (None: unknown).
  default_feedforward: Optional[List[str]]
  # Our unscanned projection path -> (HF module name, in, out features).
  modules: Dict[str, Tuple[str, int, int]]


def _modules(param_map: Mapping[str, Tuple[str, Tuple[int, ...], Any]]
             ) -> Dict[str, Tuple[str, int, int]]:
  """Every projection kernel of a parameter map but the output projection
  (`lm_head`), which PEFT never adapts either."""
  modules = {}
  for ours, (name, shape, _) in param_map.items():
    path, leaf = ours.rsplit("/", 1)
    if leaf != "kernel" or path == "decoder/logits_dense":
      continue
    modules[path] = (name[:-len(".weight")], shape[0], shape[1])
  return modules


def peft_names(config: Any) -> PeftNames:
  """The names for a T5Config or a DecoderConfig (unscanned)."""
  if isinstance(config, DecoderConfig):
    return PeftNames(
        task_type=CAUSAL_LM, model="decoder-only LM",
        projection={"query": "q_proj", "key": "k_proj", "value": "v_proj",
                    "out": "o_proj", "wi_0": "gate_proj", "wi_1": "up_proj",
                    "wo": "down_proj"},
        default_targets={LORA: ["q_proj", "v_proj"], IA3: None},
        default_feedforward=None,
        modules=_modules(hf_decoder.param_map(config)))
  return PeftNames(
      task_type=SEQ_2_SEQ_LM, model="T5",
      projection={"query": "q", "key": "k", "value": "v", "out": "o",
                  "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"},
      default_targets={LORA: ["q", "v"], IA3: ["k", "v", "wo"]},
      default_feedforward=["wo"],
      modules=_modules(hf.param_map(config)))
