"""Multitask prompts: a shared prompt combined with each example's task part.

One run trains prompts for several tasks at once. Every example carries the
index of its task (`data.pipeline.TASK_ID_FEATURE`, a batch feature the data
layer adds from the task the example came from, not a sentinel token), so a
batch mixes tasks freely and each row gets its own [P', H] prompt, which the
frozen model receives as a per-example prompt. The combinations:

- 'add' (official `AddMultiTaskPrompt`): shared [P, H] + task [P, H]; the
  task parts start at zero, so every task starts from the shared prompt.
- 'concat' (official `ConcatMultiTaskPrompt`): [shared [P, H]; task
  [P_t, H]] along the sequence, P + P_t positions.
- 'concat_features' (official `ConcatFeaturesMultiTaskPrompt`): [shared
  [P, H_s], task [P, H - H_s]] along the features.
- 'project' (official `ProjectMultiTaskPrompt`): shared @ K_t^T + b_t with a
  task's [H, H] kernel (identity at the start) and [H] bias (zeros).
- 'mpt' (Wang et al. 2023, PEFT's MULTITASK_PROMPT_TUNING): shared ⊙
  (U_t @ V_t) with U_t [P, r], V_t [r, H] ~ N(0, 0.02), as PEFT initialises
  them; on the encoder only, which is PEFT's MPT with
  num_transformer_submodules = 1 (its default of 2 also prepends prompts to
  the decoder's inputs in training but not in generation).

The shared prompt starts from the run's prompt initializer (class labels,
sampled vocabulary, text, ...); the official code's sentinel-token task
selection is replaced by the task feature. Run prompt exports are not
written for multitask runs (the prompt differs per task): `task_prompts`
gives every task's [P', H] prompt from a checkpoint's parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from prompt_tuning.methods import base
from prompt_tuning.methods.prompt import PROMPT_PATH
from prompt_tuning.methods.prompt import prompt_name
from prompt_tuning.methods.prompt import PromptTuning
from prompt_tuning.models.config import T5Config

Array = jax.Array
PyTree = Any

MODES = ("add", "concat", "concat_features", "project", "mpt")
PREFIX = "multitask"
TASK_ID_FEATURE = "task_ids"  # data.pipeline.TASK_ID_FEATURE


@dataclasses.dataclass(frozen=True)
class MultitaskPromptConfig(PromptTuning):
  """Shared + per-task prompts; the input prompt's P is PromptConfig's."""

  name: ClassVar[str] = "multitask_prompt"
  exports_prompt: ClassVar[bool] = False

  # How the shared and task parts combine (see the module docstring).
  mode: str = "add"
  # The tasks, in index order; empty means the trained mixture's subtasks.
  tasks: Tuple[str, ...] = ()
  # P_t, the task part's length in 'concat' mode; 0 means P.
  task_length: int = 0
  # H_s, the shared part's width in 'concat_features' mode; 0 means H / 2.
  shared_features: int = 0
  # r, the rank of MPT's task matrices.
  rank: int = 1
  # The run's prompt initializer (set by the builder), for the shared part.
  prompt_init: Optional[Callable[..., Array]] = dataclasses.field(
      default=None, compare=False, hash=False, repr=False)
  # H, the model width (set by `bind`).
  width: int = 0
  # Where task 0's prompt goes in the model's tree (set by `bind`: T5's
  # encoder or a decoder-only LM's decoder); not an option.
  target: str = dataclasses.field(default="/".join(PROMPT_PATH),
                                  compare=False, repr=False)

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "tasks", tuple(self.tasks))
    if self.mode not in MODES:
      raise ValueError(f"MultitaskPromptConfig.mode = {self.mode!r} is not "
                       f"one of {MODES}.")
    if self.task_length < 0 or self.shared_features < 0 or self.rank < 1:
      raise ValueError("MultitaskPromptConfig: task_length and "
                       "shared_features must be >= 0 and rank >= 1.")
    if len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"MultitaskPromptConfig.tasks lists a task twice: "
                       f"{self.tasks}.")

  def bind(self, config: T5Config) -> "MultitaskPromptConfig":
    shared = self.shared_features or config.emb_dim // 2
    if self.mode == "concat_features" and not 0 < shared < config.emb_dim:
      raise ValueError(
          f"MultitaskPromptConfig.shared_features = {shared} must be between "
          f"1 and the model width {config.emb_dim} - 1.")
    return dataclasses.replace(self, width=config.emb_dim,
                               target=prompt_name(config))

  def bind_tasks(self, names: Tuple[str, ...]) -> "MultitaskPromptConfig":
    """Fills `tasks` from the trained mixture when none were configured."""
    if self.tasks:
      return self
    return dataclasses.replace(self, tasks=tuple(names))

  def task_index(self) -> Mapping[str, int]:
    if not self.tasks:
      raise ValueError("MultitaskPromptConfig.tasks is empty: bind the "
                       "mixture's tasks first (bind_tasks).")
    return {name: i for i, name in enumerate(self.tasks)}

  def prompt_length(self) -> int:
    if self.mode == "concat":
      return self.length + (self.task_length or self.length)
    return self.length

  def produced(self, config: T5Config):
    # The model's own prompt slot is never read (every call passes the
    # per-example prompt); model_params fills it with task 0's prompt.
    return (prompt_name(config),)

  def _shared_width(self) -> int:
    if self.mode == "concat_features":
      return self.shared_features or self.width // 2
    return self.width

  def reparameterisation(self, config: T5Config) -> base.ParamSpecs:
    tasks, p, h = len(self.tasks), self.length, config.emb_dim
    if not tasks:
      raise ValueError("MultitaskPromptConfig.tasks is empty.")
    hs = self._shared_width()

    def prompt_rows(length, first, last):
      """The run's prompt initializer's [length, H], columns [first, last)."""
      def init(key, shape, dtype=jnp.float32):
        if self.prompt_init is None:
          raise ValueError("No prompt initializer was given to the "
                           "multitask prompt (the builder sets it).")
        value = self.prompt_init(key, (length, h), dtype)[:, first:last]
        return jnp.broadcast_to(value, shape).astype(dtype)
      return init

    zeros = lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype)
    specs = {f"{PREFIX}/shared": ((p, hs), ("prompt", "prompt_embed"),
                                  prompt_rows(p, 0, hs))}
    axes = (None, "prompt", "prompt_embed")
    if self.mode == "add":
      specs[f"{PREFIX}/tasks"] = ((tasks, p, h), axes, zeros)
    elif self.mode == "concat":
      length = self.task_length or p
      specs[f"{PREFIX}/tasks"] = ((tasks, length, h), axes,
                                  prompt_rows(length, 0, h))
    elif self.mode == "concat_features":
      specs[f"{PREFIX}/tasks"] = ((tasks, p, h - hs), axes,
                                  prompt_rows(p, hs, h))
    elif self.mode == "project":
      eye = lambda key, shape, dtype=jnp.float32: jnp.broadcast_to(
          jnp.eye(h, dtype=dtype), shape)
      specs[f"{PREFIX}/kernels"] = ((tasks, h, h), (None, None, None), eye)
      specs[f"{PREFIX}/biases"] = ((tasks, h), (None, None), zeros)
    else:  # mpt
      normal = lambda key, shape, dtype=jnp.float32: 0.02 * jax.random.normal(
          key, shape, dtype)
      specs[f"{PREFIX}/cols"] = ((tasks, p, self.rank), (None, "prompt", None),
                                 normal)
      specs[f"{PREFIX}/rows"] = ((tasks, self.rank, h),
                                 (None, None, "prompt_embed"), normal)
    return specs

  def prompts(self, trainable: PyTree, task_ids: Array) -> Array:
    """[B, P', H] the prompts of tasks `task_ids` [B]."""
    names = base.flat(trainable)
    shared = names[f"{PREFIX}/shared"]
    take = lambda name: jnp.take(names[f"{PREFIX}/{name}"], task_ids, axis=0)
    batch = task_ids.shape[0]
    if self.mode == "add":
      return shared[None] + take("tasks")
    if self.mode in ("concat", "concat_features"):
      axis = 1 if self.mode == "concat" else 2
      shared = jnp.broadcast_to(shared[None], (batch,) + shared.shape)
      return jnp.concatenate([shared, take("tasks")], axis=axis)
    if self.mode == "project":
      # prompt[b, i, o] = sum_s shared[i, s] K_b[o, s] + bias_b[o]
      return (jnp.einsum("ps,bos->bpo", shared, take("kernels")) +
              take("biases")[:, None, :])
    return shared[None] * jnp.einsum("bpr,brh->bph", take("cols"),
                                     take("rows"))

  def task_prompts(self, trainable: PyTree) -> Array:
    """[N, P', H] every task's prompt, in `tasks` order."""
    return self.prompts(trainable, jnp.arange(len(self.tasks)))

  def example_prompt(self, trainable: PyTree,
                     batch: Mapping[str, Array]) -> Optional[Array]:
    if TASK_ID_FEATURE not in batch:
      raise ValueError(
          f"A multitask prompt needs each example's task: the batch has no "
          f"{TASK_ID_FEATURE!r} feature (the data layer adds it when the run "
          f"passes the method's task index).")
    return self.prompts(trainable, batch[TASK_ID_FEATURE].astype(jnp.int32))

  def model_params(self, trainable: PyTree) -> PyTree:
    names = base.flat(trainable)
    if f"{PREFIX}/shared" not in names:
      return trainable
    first = self.prompts(trainable, jnp.zeros((1,), jnp.int32))[0]
    return base.replace_reparameterisation(trainable, PREFIX,
                                          {self.target: first})

  def input_prompt(self, trainable: PyTree) -> Array:
    """Wayward prompts pull the shared part towards the text."""
    names = base.flat(trainable)
    shared = names[f"{PREFIX}/shared"]
    if shared.shape[-1] != self.width:
      raise ValueError("Wayward prompts need a full-width shared prompt: "
                       "not available with mode 'concat_features'.")
    return shared
