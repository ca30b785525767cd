"""The frozen model: T5 in flax.linen with T5X's parameter names.

`config` (T5Config and the presets), `layers`, `t5` (the encoder-decoder),
`decoding` (KV-cached greedy / beam search, scoring). The bottom of the
package: imports jax, flax and numpy only.
"""

from prompt_tuning.models.config import PRESETS
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.config import t5_config
from prompt_tuning.models.t5 import T5

__all__ = ["PRESETS", "T5", "T5Config", "t5_config"]
