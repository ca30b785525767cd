"""Model tuning: the paper's baseline, every weight of T5 trains."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from prompt_tuning.methods.base import Method


@dataclasses.dataclass(frozen=True)
class ModelTuning(Method):
  """Nothing frozen, no hooks: plain T5 through the same loop."""

  name: ClassVar[str] = "model"
  trains_everything: ClassVar[bool] = True
