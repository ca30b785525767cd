"""Building a run's model: frozen weights, the prompt, shardings.

Shared by training, evaluation and inference runs: load the pretrained T5
straight into its shardings, wrap it as a `PromptedT5` (prompt tuning) or keep
the plain `T5` (model tuning), initialise the prompt with the configured
initializer, and split the tree into (trainable, frozen).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.models import T5
from prompt_tuning.models.config import T5Config
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts import initializers
from prompt_tuning.training.state import PROMPT_PATH
from prompt_tuning.training.state import TrainState
from prompt_tuning.training.state import split_trainable

PyTree = Any

PROMPT_INITS = ("class_labels", "sampled_vocab", "random_uniform", "from_text",
                "from_file")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """The soft prompt of a prompt-tuning run."""

  # Number of prompt vectors P (the paper's default 100).
  length: int = 100
  # 'prefix' ([P; X], the paper) or 'suffix' (right before EOS).
  placement: str = "prefix"
  # Initializer name: class_labels (the paper's default), sampled_vocab,
  # random_uniform, from_text, from_file.
  init: str = "class_labels"
  # Label words for class_labels; empty means sampled vocabulary only.
  class_labels: Tuple[str, ...] = ()
  # Text whose token embeddings start the prompt (init='from_text').
  text: str = ""
  # A saved [P, H] prompt, .npy (init='from_file'; SPoT-style transfer).
  file: str = ""
  # Half-width of the uniform init range (the paper: 0.5).
  uniform_scale: float = 0.5
  # Sampled-vocabulary inits draw from this many most common tokens.
  vocab_sample_size: int = 5000

  def __post_init__(self):
    # Gin hands lists; a frozen config wants a hashable tuple.
    object.__setattr__(self, "class_labels", tuple(self.class_labels))
    if self.init not in PROMPT_INITS:
      raise ValueError(f"Unknown prompt init {self.init!r}; use one of "
                       f"{PROMPT_INITS}.")
    if self.length < 1:
      raise ValueError(f"Prompt length must be >= 1, got {self.length}.")


def prompt_initializer(prompt: PromptConfig, embedding: np.ndarray,
                       vocabulary: Any) -> initializers.Initializer:
  """The configured initializer, bound to the frozen embedding table."""
  vocab = lambda: initializers.sampled_vocab(embedding,
                                             prompt.vocab_sample_size)
  if prompt.init == "random_uniform":
    return initializers.random_uniform(prompt.uniform_scale)
  if prompt.init == "sampled_vocab":
    return vocab()
  if prompt.init == "class_labels":
    if not prompt.class_labels:
      logging.warning("Prompt init class_labels without CLASS_LABELS: every "
                      "position is sampled vocabulary.")
      return vocab()
    return initializers.class_labels(embedding, list(prompt.class_labels),
                                     vocabulary, fallback=vocab())
  if prompt.init == "from_text":
    return initializers.from_text(embedding, prompt.text, vocabulary,
                                  fallback=vocab())
  return initializers.from_file(prompt.file)


@dataclasses.dataclass
class RunModel:
  """Everything a run needs about its model, placed on the mesh."""

  model: nn.Module
  config: T5Config
  trainable: PyTree
  frozen: PyTree
  mesh: jax.sharding.Mesh
  rules: partitioning.Rules

  def trainable_shardings(self) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x.sharding, self.trainable)

  def frozen_shardings(self) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x.sharding, self.frozen)


def build_model(*, initial_checkpoint_path: str,
                model_config: Optional[T5Config], mode: str,
                prompt: PromptConfig, mesh: jax.sharding.Mesh,
                rules: partitioning.Rules, vocabulary: Any,
                rng: jax.Array, dropout_rate: Optional[float] = None,
                frozen_dtype: Optional[str] = None,
                dtype: Optional[str] = None) -> RunModel:
  """Loads the frozen checkpoint and builds the trainable part.

  Args:
    initial_checkpoint_path: the pretrained T5 (T5X or HF; see
      `load_pretrained`).
    model_config: its config (required for T5X checkpoints).
    mode: 'prompt' (train the prompt only) or 'model' (train every weight).
    prompt: the prompt's configuration (prompt mode).
    mesh, rules: where and how to shard.
    vocabulary: the task's input vocabulary (class-label / text inits).
    rng: initialises the prompt.
    dropout_rate: overrides the config's dropout (the paper: 0.1).
    frozen_dtype: storage dtype of the frozen weights in prompt mode, e.g.
      'bfloat16' to halve their memory (the prompt stays float32); None
      keeps the config's `param_dtype`. Each weight is cast on the host as
      it is read, so no float32 copy of the model reaches a device.
    dtype: the compute dtype ('bfloat16' or 'float32'); None keeps the
      config's (bfloat16 in the T5X presets and from HF config.json).
  """
  if dtype not in (None, "bfloat16", "float32"):
    raise ValueError(f"dtype={dtype!r}: the model computes in 'bfloat16' or "
                     f"'float32' (None keeps the model config's).")
  if not initial_checkpoint_path:
    raise ValueError("INITIAL_CHECKPOINT_PATH is not set: prompt tuning needs "
                     "a pretrained T5 to freeze (a T5X or Hugging Face "
                     "checkpoint).")
  if frozen_dtype is not None and mode == "model":
    raise ValueError(
        f"frozen_dtype={frozen_dtype!r} is for prompt tuning: model tuning "
        f"freezes nothing (set the config's param_dtype instead).")
  config, params = load_pretrained(initial_checkpoint_path, model_config,
                                   mesh, rules, param_dtype=frozen_dtype)
  if frozen_dtype is not None:
    # The model's own param_dtype is what the prompt is created in (float32
    # for the optimizer); the frozen arrays keep the dtype they were read in.
    config = config.replace(param_dtype=(model_config.param_dtype
                                         if model_config else "float32"))
  if dropout_rate is not None:
    config = config.replace(dropout_rate=dropout_rate)
  if dtype is not None:
    config = config.replace(dtype=dtype)
  if mode == "model":
    trainable, frozen = split_trainable(params, "model")
    return RunModel(T5(config), config, trainable, frozen, mesh, rules)

  # to_host: with the model axis across processes the table spans them.
  embedding = partitioning.to_host(params["token_embedder"]["embedding"])
  init = prompt_initializer(prompt, embedding.astype(np.float32), vocabulary)
  model = PromptedT5(config, prompt.length, init, prompt.placement)
  shape = (prompt.length, config.emb_dim)
  sharding = partitioning.sharding_for(("prompt", "prompt_embed"), mesh,
                                       rules, shape, "/".join(PROMPT_PATH))
  value = jax.jit(lambda key: init(key, shape, jnp.float32),
                  out_shardings=sharding)(rng)
  params["encoder"]["prompt"] = {"prompt": value}
  trainable, frozen = split_trainable(params, "prompt")
  return RunModel(model, config, trainable, frozen, mesh, rules)


def state_shardings(state: TrainState, param_shardings: PyTree,
                    mesh: jax.sharding.Mesh) -> TrainState:
  """Shardings for a train state: params as given, optimizer statistics
  follow the params (see `_map_opt_state`), step and rng replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shapes = jax.tree_util.tree_map(lambda x: x.shape, state.params)
  return TrainState(
      step=replicated, params=param_shardings,
      opt_state=_map_opt_state(state.opt_state, shapes, param_shardings,
                               replicated),
      rng=replicated)


def _map_opt_state(opt_state: PyTree, shapes: PyTree, shardings: PyTree,
                   replicated) -> PyTree:
  """Optimizer-state shardings by shape: a leaf with exactly the shape of a
  param (Adam-like moments, unfactored Adafactor statistics) is sharded like
  the first param of that shape; anything else is replicated."""
  by_shape = {}
  for shape, sharding in zip(jax.tree_util.tree_leaves(
      shapes, is_leaf=lambda x: isinstance(x, tuple)),
                             jax.tree_util.tree_leaves(shardings)):
    by_shape.setdefault(tuple(shape), sharding)
  return jax.tree_util.tree_map(
      lambda leaf: by_shape.get(tuple(getattr(leaf, "shape", ())),
                                replicated), opt_state)
