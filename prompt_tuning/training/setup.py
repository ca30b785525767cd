"""Building a run's model: frozen weights, the method's parameters, shardings.

Shared by training, evaluation and inference runs: load the pretrained T5
straight into its shardings, switch on the hooks the method needs
(`methods`), wrap it as a `PromptedT5` when the method prepends a prompt,
initialise what the checkpoint does not hold (the prompt with the configured
initializer; LoRA, IA3, prefixes and reparameterisations with their own
initializers, each straight into its sharding), and split the tree into
(trainable, frozen).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import methods
from prompt_tuning import partitioning
from prompt_tuning.methods import base as method_base
from prompt_tuning.methods import wayward
from prompt_tuning.methods.prompt import prompt_name
from prompt_tuning.pretrained import is_decoder_only
from prompt_tuning.pretrained import load_decoder_only
from prompt_tuning.pretrained import load_pretrained
from prompt_tuning.models import T5
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_only.config import DecoderConfig
from prompt_tuning.models.decoder_only.model import DecoderOnlyLM
from prompt_tuning.prompts import PromptedT5
from prompt_tuning.prompts.decoder_model import DECODER_PLACEMENTS
from prompt_tuning.prompts.decoder_model import PromptedDecoderOnly
from prompt_tuning.prompts.decoder_model import prompt_space_table
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts.layer import FULL_ATTENTION
from prompt_tuning.prompts.layer import check_prompt_attention
from prompt_tuning.training.state import TrainState

PyTree = Any

# What a decoder-only MODEL_CONFIG (a preset) must share with config.json.
_DECODER_ARCHITECTURE = ("family", "vocab_size", "emb_dim", "num_heads",
                         "num_kv_heads", "head_dim", "mlp_dim", "num_layers",
                         "qkv_bias", "out_bias", "tie_embeddings")

PROMPT_INITS = ("class_labels", "sampled_vocab", "random_uniform", "from_text",
                "from_file")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """The soft prompt of a prompt-tuning run."""

  # Number of prompt vectors P (the paper's default 100).
  length: int = 100
  # 'prefix' ([P; X], the paper), 'suffix' (right before EOS) or
  # 'after_first' (after the first token; prompts.layer.PLACEMENTS).
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
  # Wayward prompts: weight gamma of the penalty gamma * ||P - E(text)||^2 / P
  # that keeps the prompt near the embedded `wayward_text` (0 = off).
  wayward_gamma: float = 0.0
  # The discrete prompt to stay near; empty means `text`.
  wayward_text: str = ""
  # Who may attend to whom in the encoder (the official extended/masks.py
  # types, prompts.layer.PROMPT_ATTENTION); the default is full attention
  # among real positions, the paper's. Variants need placement 'prefix'.
  attention: Tuple[str, ...] = FULL_ATTENTION

  def __post_init__(self):
    # Gin hands lists; a frozen config wants a hashable tuple.
    object.__setattr__(self, "class_labels", tuple(self.class_labels))
    object.__setattr__(self, "attention", tuple(self.attention))
    check_prompt_attention(self.attention)
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


def make_method(mode: str, prompt: PromptConfig,
                options: Mapping[str, methods.Method] = ()) -> methods.Method:
  """The method `mode` names, with its options and the shared prompt's.

  Args:
    mode: a key of `methods.METHODS` (gin's METHOD).
    prompt: the input prompt of the prompt methods (length, placement,
      wayward weight); ignored by the others.
    options: method name -> its configured options (e.g. gin's
      `LoraConfig()`); a method without an entry takes its defaults.
  """
  cls = methods.method_class(mode)
  method = dict(options or {}).get(mode) or cls()
  if not isinstance(method, cls):
    raise ValueError(f"The options given for METHOD = {mode!r} are a "
                     f"{type(method).__name__}, not a {cls.__name__}.")
  if mode in methods.PROMPT_METHODS:
    method = dataclasses.replace(method, length=prompt.length,
                                 placement=prompt.placement,
                                 wayward_gamma=prompt.wayward_gamma)
  elif prompt.wayward_gamma:
    raise ValueError(f"PromptConfig.wayward_gamma = {prompt.wayward_gamma} "
                     f"needs a method with an input prompt "
                     f"({', '.join(methods.PROMPT_METHODS)}), not {mode!r}.")
  return method


@dataclasses.dataclass
class RunModel:
  """Everything a run needs about its model, placed on the mesh."""

  model: nn.Module
  # A T5Config, or a DecoderConfig for a decoder-only LM.
  config: Any
  trainable: PyTree
  frozen: PyTree
  mesh: jax.sharding.Mesh
  rules: partitioning.Rules
  # What trains and how it reaches the model (prompt tuning by default).
  method: methods.Method = dataclasses.field(
      default_factory=methods.PromptTuning)

  def model_params(self, trainable: PyTree) -> PyTree:
    """The model's parameters from trainable ones (reparameterisations
    merged), for `merge_params` with the frozen tree."""
    return self.method.model_params(trainable)

  @property
  def decoder_only(self) -> bool:
    return isinstance(self.config, DecoderConfig)

  @property
  def prompt_path(self) -> Tuple[str, ...]:
    """Where the input prompt is in the model's tree."""
    return tuple(prompt_name(self.config).split("/"))

  def feature_converter(self):
    """What turns task examples into this model's batches
    (`data.pipeline.get_dataset`): None is T5's; a decoder-only LM reads
    `[BOS] inputs targets` rows."""
    if self.decoder_only:
      # Imported here: seqio and TensorFlow are the data pipeline's, and the
      # benchmark builds models without them.
      from prompt_tuning.data import decoder_features  # pylint: disable=g-import-not-at-top
      return decoder_features.DecoderOnlyConverter(self.config.bos_id)
    return None

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
                dtype: Optional[str] = None,
                method: Optional[methods.Method] = None) -> RunModel:
  """Loads the frozen checkpoint and builds the trainable part.

  Args:
    initial_checkpoint_path: the pretrained T5 (T5X or HF; see
      `load_pretrained`), or a Hugging Face decoder-only LM (Llama, Mistral,
      Qwen2, Gemma 2/3: `load_decoder_only`), told apart by config.json.
    model_config: its config (required for T5X checkpoints; for an HF
      checkpoint None, or one equal to its config.json's).
    mode: a method name (`methods.METHODS`): 'prompt' trains the prompt
      only, 'model' every weight, the others their own parameters.
    prompt: the input prompt's configuration (prompt methods).
    mesh, rules: where and how to shard.
    vocabulary: the task's input vocabulary (class-label / text inits).
    rng: initialises the prompt.
    dropout_rate: overrides the config's dropout (the paper: 0.1); the
      decoder-only LMs have no dropout.
    frozen_dtype: storage dtype of the frozen weights in prompt mode, e.g.
      'bfloat16' to halve their memory (the prompt stays float32); None
      keeps the config's `param_dtype`. Each weight is cast on the host as
      it is read, so no float32 copy of the model reaches a device.
    dtype: the compute dtype ('bfloat16' or 'float32'); None keeps the
      config's (bfloat16 in the T5X presets and from HF config.json).
    method: the configured method (`make_method`); None builds `mode`'s
      with its defaults.
  """
  if dtype not in (None, "bfloat16", "float32"):
    raise ValueError(f"dtype={dtype!r}: the model computes in 'bfloat16' or "
                     f"'float32' (None keeps the model config's).")
  if not initial_checkpoint_path:
    raise ValueError("INITIAL_CHECKPOINT_PATH is not set: prompt tuning needs "
                     "a pretrained model to freeze (a T5X or Hugging Face "
                     "checkpoint).")
  if method is None:
    method = make_method(mode, prompt)
  if frozen_dtype is not None and method.trains_everything:
    raise ValueError(
        f"frozen_dtype={frozen_dtype!r} is for prompt tuning: model tuning "
        f"freezes nothing (set the config's param_dtype instead).")
  if is_decoder_only(initial_checkpoint_path):
    config, params = _load_decoder_only(initial_checkpoint_path,
                                        model_config, method, prompt, mesh,
                                        rules, frozen_dtype)
  else:
    config, params = load_pretrained(initial_checkpoint_path, model_config,
                                     mesh, rules, param_dtype=frozen_dtype)
    if dropout_rate is not None:
      config = config.replace(dropout_rate=dropout_rate)
  if frozen_dtype is not None:
    # The model's own param_dtype is what the prompt is created in (float32
    # for the optimizer); the frozen arrays keep the dtype they were read in.
    config = config.replace(param_dtype=(model_config.param_dtype
                                         if model_config else "float32"))
  if dtype is not None:
    config = config.replace(dtype=dtype)
  return attach_method(config=config, params=params, method=method,
                       prompt=prompt, mesh=mesh, rules=rules,
                       vocabulary=vocabulary, rng=rng)


def _load_decoder_only(path: str, model_config: Any,
                       method: methods.Method, prompt: PromptConfig,
                       mesh: jax.sharding.Mesh, rules: partitioning.Rules,
                       frozen_dtype: Optional[str]):
  """`load_decoder_only` after the checks that only this family needs (the
  config, when one is given, must be the checkpoint's)."""
  if method.prompt_length():
    if prompt.placement not in DECODER_PLACEMENTS:
      raise ValueError(
          f"PromptConfig.placement = {prompt.placement!r}: a decoder-only "
          f"LM's prompt goes at one of {DECODER_PLACEMENTS}.")
    if prompt.attention != FULL_ATTENTION:
      raise ValueError(
          f"PromptConfig.attention = {prompt.attention!r} is for T5's "
          f"encoder; a decoder-only LM's prompt is attended causally.")
  if model_config is not None and not isinstance(model_config,
                                                 DecoderConfig):
    raise ValueError(
        f"MODEL_CONFIG is a {type(model_config).__name__}, but {path} is a "
        f"decoder-only checkpoint; include models/from_checkpoint.gin "
        f"(MODEL_CONFIG = None: config.json decides).")
  config, params = load_decoder_only(path, mesh, rules,
                                     param_dtype=frozen_dtype)
  if model_config is not None:
    # A preset names the architecture (a sweep's size axis); config.json
    # decides everything else (rope, norms, special tokens).
    differ = [f for f in _DECODER_ARCHITECTURE
              if getattr(model_config, f) != getattr(config, f)]
    if differ:
      raise ValueError(
          f"MODEL_CONFIG differs from {path}/config.json in "
          f"{', '.join(differ)}: another model's checkpoint? Set "
          f"MODEL_CONFIG = None to use the checkpoint's.")
    config = config.replace(dtype=model_config.dtype,
                            remat_policy=model_config.remat_policy)
    if frozen_dtype is None:
      config = config.replace(param_dtype=model_config.param_dtype)
  return config, params


def attach_method(*, config: T5Config, params: PyTree,
                  method: methods.Method, prompt: PromptConfig,
                  mesh: jax.sharding.Mesh, rules: partitioning.Rules,
                  vocabulary: Any, rng: jax.Array) -> RunModel:
  """The method's half of `build_model`, from frozen weights on.

  Binds the method, switches on its hooks, wraps the model as a
  `PromptedT5` when the method prepends a prompt and creates what the
  weights lack (`_init_trainable`). `build_model` calls it on a loaded
  checkpoint; the benchmark on random weights, so both build the same
  model and trainable tree.

  Args:
    config: the frozen model's config (dtype, dropout already applied; its
      `param_dtype` is the one new parameters are created in).
    params: the frozen model's parameters (plain T5's tree), placed.
    method: the configured method (`make_method`), not yet bound.
    prompt, mesh, rules, vocabulary, rng: as for `build_model`.
  """
  method = method.bind(config)
  decoder_only = isinstance(config, DecoderConfig)
  if decoder_only:
    # The hooks are the LM module's field, not its config's.
    adapters = method.adapters(config)
    plain = DecoderOnlyLM(config, adapters)
  else:
    config = config.replace(adapters=method.adapters(config))
    plain = T5(config)
  if method.trains_everything:
    return RunModel(plain, config, params, {}, mesh, rules, method)

  length = method.prompt_length()
  init = None
  if length:
    # to_host: with the model axis across processes the table spans them.
    embedding = partitioning.to_host(
        params["token_embedder"]["embedding"]).astype(np.float32)
    if decoder_only:
      embedding = prompt_space_table(config, embedding)
    init = prompt_initializer(prompt, embedding, vocabulary)
    if getattr(method, "wayward_gamma", 0):
      target = wayward.discrete_prompt(
          embedding, vocabulary, prompt.wayward_text or prompt.text, length)
      method = dataclasses.replace(method, wayward_target=target)
    if "prompt_init" in {f.name for f in dataclasses.fields(method)}:
      # Multitask prompts start their shared part from the run's init.
      method = dataclasses.replace(method, prompt_init=init)
    if decoder_only:
      model = PromptedDecoderOnly(config, adapters, prompt_length=length,
                                  prompt_init=init,
                                  placement=prompt.placement)
    else:
      model = PromptedT5(config, length, init, prompt.placement,
                         attention=prompt.attention)
  else:
    model = plain
  trainable = _init_trainable(model, config, method, params, init, length,
                              mesh, rules, rng)
  return RunModel(model, config, trainable, params, mesh, rules, method)


def _init_trainable(model: nn.Module, config: T5Config,
                    method: methods.Method, frozen: PyTree,
                    prompt_init: Optional[initializers.Initializer],
                    length: int, mesh: jax.sharding.Mesh,
                    rules: partitioning.Rules, rng: jax.Array) -> PyTree:
  """Creates, in their shardings, the parameters the checkpoint lacks.

  The input prompt draws from `rng` exactly as it always has (same prompt
  for the same seed); the method's other new parameters and its
  reparameterisation from keys folded out of it. Only those arrays are
  computed: the rest of `model.init` is dead code to XLA.
  """
  tokens = jnp.ones((1, 1), jnp.int32)
  decoder_only = isinstance(config, DecoderConfig)
  args = (tokens,) if decoder_only else (tokens, tokens, tokens)
  init_fn = lambda key: model.init(key, *args)["params"]
  boxed = method_base.flat(jax.eval_shape(init_fn, rng))
  frozen_names = method_base.flat(frozen)
  produced = set(method.produced(config))
  prompt_key = prompt_name(config)
  shapes = method_base.trainable_shapes(
      method, config, {n: getattr(b, "value", b).shape
                       for n, b in boxed.items()}, frozen_names)
  # The prompt has its own initializer and the reparameterisation its specs
  # (below): `new` is the rest, what `model.init` itself creates.
  new = [n for n in shapes if n in boxed and n != prompt_key]
  out: Dict[str, Any] = {}
  if length and prompt_key not in produced:
    shape = (length, config.emb_dim)
    sharding = partitioning.sharding_for(("prompt", "prompt_embed"), mesh,
                                         rules, shape, prompt_key)
    out[prompt_key] = jax.jit(
        lambda key: prompt_init(key, shape, jnp.float32),
        out_shardings=sharding)(rng)
  if new:
    shardings = {n: partitioning.sharding_for(
        boxed[n].names, mesh, rules, boxed[n].value.shape, n) for n in new}

    def select(key):
      values = method_base.flat(nn.unbox(init_fn(key)))
      return {n: values[n] for n in new}
    out.update(jax.jit(select, out_shardings=shardings)(
        jax.random.fold_in(rng, 1)))
  specs = method.reparameterisation(config)
  for i, (name, (shape, axes, initializer)) in enumerate(sorted(specs.items())):
    sharding = partitioning.sharding_for(axes, mesh, rules, shape, name)
    out[name] = jax.jit(
        lambda key, s=shape, f=initializer: f(key, s, jnp.float32),
        out_shardings=sharding)(jax.random.fold_in(rng, 2 + i))
  if not out:
    raise ValueError(f"Method {method.name!r} adds no parameter to train.")
  return method_base.nested(out)


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
