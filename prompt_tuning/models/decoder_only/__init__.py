"""Frozen decoder-only LMs: the Llama family (Llama, Mistral, Qwen2) and
Gemma 2, with our T5's parameter names and logical axes.

`config` (DecoderConfig, HF config.json reading, presets) and `model`
(DecoderOnlyLM). Checkpoints are read by `pretrained.hf_decoder`.
"""

from prompt_tuning.models.decoder_only.config import PRESETS
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.models.decoder_only.config import decoder_config
from prompt_tuning.models.decoder_only.config import from_hf
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM

__all__ = ["PRESETS", "DecoderConfig", "DecoderOnlyLM", "decoder_config",
           "from_hf"]
