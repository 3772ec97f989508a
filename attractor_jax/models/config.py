"""One configuration dataclass for every language model in the package."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from attractor_jax import errors
from attractor_jax.nn import attractor_head
from attractor_jax.nn import blocks
from attractor_jax.nn import mlp as mlp_lib
from attractor_jax.nn import rotary

MODEL_KINDS = ("attractor", "gpt", "looped", "deq")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and settings of an LM; fields a kind does not use are ignored.

  Attributes:
    kind: "attractor", "gpt", "looped" or "deq".
    vocab_size, dim, num_heads, mlp_dim: sizes.
    num_layers: backbone blocks (attractor), all blocks (gpt), core blocks
      (looped, deq).
    head_layers: blocks of the attractor head's residual branch R.
    prelude_layers, coda_layers: looped model's untied blocks before/after.
    mean_depth: looped model's mean number of core iterations in training
      (and its depth at evaluation); backprop_depth: steps that get gradients.
    mlp, norm, qk_norm, rope_theta, rope_convention, norm_eps: block settings.
    qk_norm_eps: epsilon of the QK-norm; None (our models) uses norm_eps.
      Imported public checkpoints set float32's machine epsilon, which is
      what the public code's weightless QK-norm uses on float32 activations.
    gate_max, gate_init: attractor head gates (gamma_max, layer_scale_init).
    solve: the attractor head's (or DEQ's) solver settings.
    tie_embeddings: unembed with the embedding (attractor, gpt, looped).
    logit_softcap: if set, logits = cap * tanh(logits / cap).
    ignore_index: targets equal to this are left out of the loss.
    embed_init_std, init_std, out_init_scale: initialisation.
    head_out_init_scale: out_init_scale of the attractor head's blocks. Not
      zero by default: a head whose output projections start at zero is the
      constant map f(y; c) = c, which converges at once and gives its gates
      no gradient.
    dtype, param_dtype: "float32" / "bfloat16" activations and parameters.
  """

  kind: str = "attractor"
  vocab_size: int = 256
  dim: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  num_layers: int = 2
  head_layers: int = 1
  prelude_layers: int = 1
  coda_layers: int = 1
  mean_depth: int = 4
  backprop_depth: int = 2
  mlp: str = "relu2"
  norm: str = "pre"
  qk_norm: bool = True
  rope_theta: float = 50000.0
  rope_convention: str = "half"
  norm_eps: float = 1e-5
  qk_norm_eps: Optional[float] = None
  causal: bool = True
  gate_max: float = 1.0
  gate_init: float = 0.1
  solve: attractor_head.SolveConfig = attractor_head.SolveConfig()
  tie_embeddings: bool = True
  logit_softcap: Optional[float] = None
  ignore_index: int = -100
  embed_init_std: float = 0.02
  init_std: float = 0.02
  out_init_scale: float = 0.0
  head_out_init_scale: float = 1.0
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    """Checks names, sizes and ranges (cheaply: no parameters are built).

    Raises:
      errors.ConfigError: naming the field, the bad value and what it takes.
    """
    choices = dict(kind=MODEL_KINDS, dtype=tuple(DTYPES),
                   param_dtype=tuple(DTYPES), mlp=mlp_lib.KINDS,
                   norm=blocks.NORM_PLACEMENTS,
                   rope_convention=rotary.CONVENTIONS)
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise errors.ConfigError(
            f"Unknown model.{name} {getattr(self, name)!r}; expected one of "
            f"{', '.join(known)}.")
    minimum = dict(vocab_size=1, dim=1, num_heads=1, mlp_dim=1,
                   num_layers=0 if self.kind == "attractor" else 1,
                   head_layers=1 if self.kind == "attractor" else 0,
                   prelude_layers=0, coda_layers=0)
    if self.kind == "looped":
      minimum.update(mean_depth=1, backprop_depth=1)
    for name, least in minimum.items():
      value = getattr(self, name)
      if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
          or value < least):
        raise errors.ConfigError(
            f"model.{name} must be an integer >= {least}; got {value!r}.")
    if self.dim % self.num_heads:
      raise errors.ConfigError(
          f"model.dim {self.dim} is not divisible by model.num_heads "
          f"{self.num_heads}.")
    if (self.dim // self.num_heads) % 2:
      raise errors.ConfigError(
          f"model.dim / model.num_heads = {self.dim // self.num_heads} must "
          "be even (rotary embeddings rotate pairs of channels).")
    positive = dict(norm_eps=self.norm_eps, rope_theta=self.rope_theta,
                    gate_max=self.gate_max)
    if self.logit_softcap is not None:
      positive["logit_softcap"] = self.logit_softcap
    if self.qk_norm_eps is not None:
      positive["qk_norm_eps"] = self.qk_norm_eps
    for name, value in positive.items():
      if not value > 0:
        raise errors.ConfigError(f"model.{name} must be > 0; got {value!r}.")
    if self.kind == "attractor" and not 0 < self.gate_init < self.gate_max:
      raise errors.ConfigError(
          f"model.gate_init must lie in (0, gate_max={self.gate_max}); got "
          f"{self.gate_init}.")

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  def block_spec(self, *, gated: bool = False, **overrides) -> blocks.BlockSpec:
    """The BlockSpec of this model's blocks (gated for the attractor head)."""
    fields = dict(
        dim=self.dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        mlp=self.mlp, norm=self.norm, qk_norm=self.qk_norm,
        rope_theta=self.rope_theta, rope_convention=self.rope_convention,
        causal=self.causal, norm_eps=self.norm_eps,
        qk_norm_eps=self.qk_norm_eps,
        gate_max=self.gate_max if gated else None, gate_init=self.gate_init,
        init_std=self.init_std,
        out_init_scale=(self.head_out_init_scale if gated
                        else self.out_init_scale),
        dtype=self.jnp_dtype, param_dtype=self.jnp_param_dtype)
    fields.update(overrides)
    return blocks.BlockSpec(**fields)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def config_to_dict(config: Any) -> dict:
  """A JSON-serialisable dict of a dataclass, ConfigDict, mapping or None.

  Values JSON cannot hold (dtypes, tuples' contents, enums...) become their
  `str`; tuples become lists.
  """
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  elif dataclasses.is_dataclass(config) and not isinstance(config, type):
    config = dataclasses.asdict(config)
  return json.loads(json.dumps(_jsonable(config)))


def _jsonable(x: Any) -> Any:
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return _jsonable(dataclasses.asdict(x))
  if hasattr(x, "to_dict"):
    return _jsonable(x.to_dict())
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (bool, int, str)) or x is None:
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else str(x)
  if isinstance(x, (np.generic, np.ndarray, jax.Array)) and np.ndim(x) == 0:
    return _jsonable(np.asarray(x).item())
  return str(x)
