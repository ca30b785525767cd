"""The parameter-efficient methods, one module each, chosen by name.

`METHOD` in gin (`train.mode`) picks one of `METHODS`; its options come from
that method's config (`PromptConfig` for the input prompt every prompt method
shares, and `DeepPromptConfig`, `PrefixConfig`, `PTuningConfig`,
`MultitaskPromptConfig`, `IA3Config`, `LoraConfig`). `methods.base` says what a method decides; the
loop, checkpoints, evaluation and report are shared by all.
"""

import difflib

from prompt_tuning.methods.base import Method
from prompt_tuning.methods.deep_prompt import DeepPromptConfig
from prompt_tuning.methods.ia3 import IA3Config
from prompt_tuning.methods.lora import LoraConfig
from prompt_tuning.methods.model_tuning import ModelTuning
from prompt_tuning.methods.multitask import MultitaskPromptConfig
from prompt_tuning.methods.p_tuning import PTuningConfig
from prompt_tuning.methods.prefix import PrefixConfig
from prompt_tuning.methods.prompt import PromptTuning

# Name -> the method's class.
METHODS = {cls.name: cls for cls in (
    PromptTuning, DeepPromptConfig, PrefixConfig, PTuningConfig,
    MultitaskPromptConfig, IA3Config, LoraConfig, ModelTuning)}


def method_class(name: str, setting: str = "METHOD") -> type:
  """The class of method `name`, or one line naming `setting` and the
  nearest known method."""
  if name not in METHODS:
    close = difflib.get_close_matches(str(name), METHODS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{setting} = {name!r} is not a method.{hint} Known: "
                     f"{', '.join(METHODS)}.")
  return METHODS[name]


# Methods that prepend an input prompt (PromptConfig applies to them).
PROMPT_METHODS = tuple(name for name, cls in METHODS.items()
                       if issubclass(cls, PromptTuning))

__all__ = ["METHODS", "PROMPT_METHODS", "Method", "method_class", "PromptTuning",
           "DeepPromptConfig", "PrefixConfig", "PTuningConfig",
           "MultitaskPromptConfig", "IA3Config", "LoraConfig", "ModelTuning"]
