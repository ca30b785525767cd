"""What every parameter-efficient method tells the one training loop.

A method is a frozen dataclass answering four questions, and nothing else
differs between methods: the train step, checkpoints, resume, early stopping,
evaluation, inference, sweeps and the report are one code path for all.

1. Which hooks of the frozen model it switches on (`adapters`) and whether
   the model carries an input prompt (`prompt_length`).
2. Which parameters train: those the model has and the pretrained checkpoint
   does not (LoRA matrices, IA3 vectors, prompts, prefixes), less what the
   method computes from a reparameterisation, plus that reparameterisation
   (`reparameterisation`, `model_params`). Model tuning trains everything.
3. How the trainable tree becomes model parameters (`model_params`): the
   identity, or e.g. an MLP producing the prompt (P-tuning) or the prefixes
   (prefix tuning's reparameterisation). Evaluation and serving apply it
   once: the reparameterisation is merged away.
4. An optional penalty added to the training loss (`penalty`, wayward
   prompts), not to the reported metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Collection, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from prompt_tuning.models.adapters import AdapterConfig
from prompt_tuning.models.config import T5Config

Array = jax.Array
PyTree = Any
# A reparameterisation: '/'-joined name -> (shape, logical axes, initializer).
ParamSpecs = Dict[str, Tuple[Tuple[int, ...], Tuple[Optional[str], ...], Any]]


@dataclasses.dataclass(frozen=True)
class Method:
  """Prompt tuning's defaults; every method overrides what differs."""

  name: ClassVar[str] = ""
  # Whether every weight trains (model tuning): nothing is frozen.
  trains_everything: ClassVar[bool] = False
  # Whether a run exports its input prompt as prompts/step_N.npy (not when
  # the prompt differs per example).
  exports_prompt: ClassVar[bool] = True

  def bind(self, config: T5Config) -> "Method":
    """This method for one frozen model (a method whose `model_params`
    depends on the model's shape keeps it); called once by the builder."""
    del config
    return self

  def adapters(self, config: T5Config) -> AdapterConfig:
    """The hooks of the frozen model this method needs."""
    del config
    return AdapterConfig()

  def prompt_length(self) -> int:
    """P of the input prompt the model prepends; 0 for a plain T5."""
    return 0

  def reparameterisation(self, config: T5Config) -> ParamSpecs:
    """Trainable parameters outside the model tree (none by default)."""
    del config
    return {}

  def produced(self, config: T5Config) -> Tuple[str, ...]:
    """Model-tree names `model_params` computes (so they do not train)."""
    del config
    return ()

  def model_params(self, trainable: PyTree) -> PyTree:
    """The trainable tree -> the model's own parameters (traceable)."""
    return trainable

  def penalty(self, trainable: PyTree) -> Optional[Array]:
    """A float32 scalar added to the training loss, or None."""
    del trainable
    return None

  def bind_tasks(self, names: Tuple[str, ...]) -> "Method":
    """This method for a run over tasks `names` (a mixture's subtasks)."""
    del names
    return self

  def task_index(self) -> Optional[Mapping[str, int]]:
    """Task name -> index when batches must carry each example's task."""
    return None

  def example_prompt(self, trainable: PyTree,
                     batch: Mapping[str, Array]) -> Optional[Array]:
    """[B, P, H] a prompt per example, passed to the model; None: the
    model's own (or no) prompt."""
    del trainable, batch
    return None


def trainable_shapes(method: Method, config: T5Config,
                     model_shapes: Mapping[str, Tuple[int, ...]],
                     frozen_names: Collection[str]
                     ) -> Dict[str, Tuple[int, ...]]:
  """What a method trains: '/'-joined name -> shape, sorted by name.

  The parameters of the model with the method's hooks that the frozen
  checkpoint lacks, less those `model_params` computes (`produced`), plus
  the reparameterisation; model tuning trains every parameter. Pure (shapes
  in, shapes out): the builder creates exactly these, and the report counts
  them for any model size without building one.

  Args:
    method: the method, bound to `config` (`bind`).
    config: the frozen model's config, with `method.adapters(config)` on.
    model_shapes: every parameter of that model (a `PromptedT5` when the
      method prepends a prompt), e.g. from `jax.eval_shape` of its init.
    frozen_names: the names the pretrained checkpoint holds.
  """
  if method.trains_everything:
    return {n: tuple(s) for n, s in sorted(model_shapes.items())}
  produced = set(method.produced(config))
  frozen = set(frozen_names)
  out = {n: tuple(s) for n, s in sorted(model_shapes.items())
         if n not in frozen and n not in produced}
  for name, (shape, _, _) in sorted(method.reparameterisation(config).items()):
    out[name] = tuple(shape)
  return out


def flat(tree: PyTree) -> Dict[str, Any]:
  """Nested dict -> '/'-joined names (an empty tree is {})."""
  return traverse_util.flatten_dict(tree, sep="/") if tree else {}


def nested(names: Mapping[str, Any]) -> PyTree:
  return traverse_util.unflatten_dict(dict(names), sep="/")


def replace_reparameterisation(trainable: PyTree, prefix: str,
                               produced: Mapping[str, Array]) -> PyTree:
  """Drops `prefix/...` from the tree and adds the `produced` model params."""
  names = {k: v for k, v in flat(trainable).items()
           if not k.startswith(prefix + "/")}
  names.update(produced)
  return nested(names)


def torch_linear_init(fan_in: int):
  """PyTorch's nn.Linear default, U(+-1/sqrt(fan_in)) for weight and bias
  (PEFT's reparameterisation networks start from it)."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def normal_init(key, shape, dtype=jnp.float32):
  """N(0, 1), PyTorch's nn.Embedding default (PEFT's prompt tables)."""
  return jax.random.normal(key, shape, dtype)
