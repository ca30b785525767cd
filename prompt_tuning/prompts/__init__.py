"""Soft prompts for frozen T5: the prompt layer, its initializers, the model.

`layer` (the `Prompt` parameter and how it joins the embedded input),
`initializers` (random uniform, sampled vocabulary, class labels, text, file),
`npy` (the one reader of prompt `.npy` files: float32, bfloat16 as T5X saves
it, float16, float64; casts announced),
`model` (`PromptedT5`: T5 with the prompt injected after the embedding).
Many prompts on one frozen model: `library` (named prompts read from every
format they are saved in), `mixed` (ragged batches with a prompt per
example), `ensemble` (replication and majority vote), `nearest` (nearest
vocabulary tokens on a sharded table), `similarity` (SPoT measures), `peft`
(PEFT prompt-tuning adapters). May import `models/`, jax, flax, numpy and
ml_dtypes only; `peft` also uses the `safetensors` file format (numpy API).
"""

from prompt_tuning.prompts.initializers import INITIALIZERS
from prompt_tuning.prompts.initializers import class_labels
from prompt_tuning.prompts.initializers import from_file
from prompt_tuning.prompts.initializers import from_text
from prompt_tuning.prompts.initializers import random_uniform
from prompt_tuning.prompts.initializers import sampled_vocab
from prompt_tuning.prompts.layer import Prompt
from prompt_tuning.prompts.layer import combine
from prompt_tuning.prompts.layer import combine_mask
from prompt_tuning.prompts.model import PromptedEncoder
from prompt_tuning.prompts.model import PromptedT5
from prompt_tuning.prompts.model import merge_params
from prompt_tuning.prompts.model import prompt_param_path
from prompt_tuning.prompts.model import split_prompt

__all__ = [
    "INITIALIZERS", "Prompt", "PromptedEncoder", "PromptedT5", "class_labels",
    "combine", "combine_mask", "from_file", "from_text", "merge_params",
    "prompt_param_path", "random_uniform", "sampled_vocab", "split_prompt",
]
