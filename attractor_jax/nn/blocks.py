"""Transformer blocks: pre-norm or post-norm, optionally gated per channel."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn import attention as attention_lib
from attractor_jax.nn import initializers
from attractor_jax.nn import mlp as mlp_lib
from attractor_jax.nn import norms

NORM_PLACEMENTS = ("pre", "post")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """Hyperparameters of one transformer block.

  Attributes:
    dim, num_heads, mlp_dim: widths.
    mlp: "relu2" or "swiglu".
    norm: "pre" (x + F(norm(x))) or "post" (norm(x + F(x))).
    qk_norm: RMS-normalise queries and keys per head.
    rope_theta, rope_convention: rotary embeddings ("half" or "interleaved");
      rope_theta None switches rotary off (positions are then unused).
    causal: decoder masking, by sequence index (never by position values).
    attention: False builds MLP-only blocks (no token mixing; num_heads,
      qk_norm, rotary and causal are then unused).
    norm_eps: RMSNorm epsilon.
    qk_norm_eps: QK-norm epsilon (None: norm_eps).
    gate_max: if set, attention and MLP outputs are scaled per channel by
      gate_max * sigmoid(raw), raw initialised so the gate is gate_init.
    gate_init: the gate's initial value (layer scale).
    init_std: std of the input projections.
    out_init_scale: output projections start at std init_std * this (0: zero).
    dtype, param_dtype: activation and parameter dtypes.
  """

  dim: int
  num_heads: int
  mlp_dim: int
  mlp: str = "relu2"
  norm: str = "pre"
  qk_norm: bool = False
  rope_theta: Optional[float] = 10000.0
  rope_convention: str = "half"
  causal: bool = True
  norm_eps: float = 1e-5
  qk_norm_eps: Optional[float] = None
  gate_max: Optional[float] = None
  gate_init: float = 0.1
  init_std: float = 0.02
  out_init_scale: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention: bool = True

  def __post_init__(self):
    if self.norm not in NORM_PLACEMENTS:
      raise ValueError(f"Unknown norm placement {self.norm!r}; expected one "
                       f"of {NORM_PLACEMENTS}.")
    if self.gate_max is not None and not 0 < self.gate_init < self.gate_max:
      raise ValueError(f"gate_init must lie in (0, gate_max={self.gate_max}); "
                       f"got {self.gate_init}.")


class ChannelGate(nnx.Module):
  """g = gate_max * sigmoid(raw), one value per channel."""

  def __init__(self, dim: int, gate_max: float, gate_init: float,
               param_dtype=jnp.float32, *, rngs: nnx.Rngs):
    self.gate_max = gate_max
    raw = math.log(gate_init / (gate_max - gate_init))     # logit(init / max)
    self.raw = initializers.make_param(
        rngs, jax.nn.initializers.constant(raw), (dim,), ("embed",),
        param_dtype)

  @property
  def value(self) -> jax.Array:
    return self.gate_max * jax.nn.sigmoid(self.raw[...].astype(jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return (x.astype(jnp.float32) * self.value).astype(x.dtype)


class Block(nnx.Module):
  """Attention then MLP, each with a residual connection.

  With `spec.attention` False the block is its MLP alone (attn, attn_norm and
  attn_gate are None): it maps `[batch, ..., dim]` to the same shape.
  """

  def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs):
    self.spec = spec
    common = dict(init_std=spec.init_std, out_init_scale=spec.out_init_scale,
                  dtype=spec.dtype, param_dtype=spec.param_dtype, rngs=rngs)
    self.attn_norm = nnx.data(None)
    self.attn = nnx.data(None)
    if spec.attention:
      self.attn_norm = norms.RMSNorm(spec.dim, eps=spec.norm_eps,
                                     param_dtype=spec.param_dtype, rngs=rngs)
      self.attn = attention_lib.Attention(
          spec.dim, spec.num_heads, qk_norm=spec.qk_norm,
          rope_theta=spec.rope_theta, rope_convention=spec.rope_convention,
          norm_eps=spec.norm_eps, qk_norm_eps=spec.qk_norm_eps, **common)
    self.mlp_norm = norms.RMSNorm(spec.dim, eps=spec.norm_eps,
                                  param_dtype=spec.param_dtype, rngs=rngs)
    self.mlp = mlp_lib.MLP(spec.dim, spec.mlp_dim, kind=spec.mlp, **common)
    self.attn_gate = nnx.data(None)
    self.mlp_gate = nnx.data(None)
    if spec.gate_max is not None:
      if spec.attention:
        self.attn_gate = ChannelGate(spec.dim, spec.gate_max, spec.gate_init,
                                     spec.param_dtype, rngs=rngs)
      self.mlp_gate = ChannelGate(spec.dim, spec.gate_max, spec.gate_init,
                                  spec.param_dtype, rngs=rngs)

  def _gated(self, gate, x):
    return x if gate is None else gate(x)

  def _check_pre_norm(self, method):
    if self.spec.norm != "pre":
      raise ValueError(f"{method}() needs a pre-norm block.")

  def _branch_after_attention(self, x, attn_out):
    if attn_out is None:
      delta = jnp.zeros_like(x)
    else:
      delta = self._gated(self.attn_gate, attn_out).astype(x.dtype)
    mlp_out = self.mlp(self.mlp_norm(x + delta))
    return delta + self._gated(self.mlp_gate, mlp_out).astype(x.dtype)

  def branch(self, x: jax.Array, *, positions=None, segment_ids=None
             ) -> jax.Array:
    """The residual update: __call__(x) - x, accumulated without cancellation.

    Only defined for pre-norm blocks, whose output is x plus this update.
    """
    self._check_pre_norm("branch")
    attn_out = None
    if self.attn is not None:
      attn_out = self.attn(self.attn_norm(x), causal=self.spec.causal,
                           positions=positions, segment_ids=segment_ids)
    return self._branch_after_attention(x, attn_out)

  def branch_cached(self, x: jax.Array, positions: jax.Array, cache):
    """`branch` for new tokens attending over a KVCache of earlier ones.

    Returns the residual update and the new tokens' (keys, values).
    """
    self._check_pre_norm("branch_cached")
    if self.attn is None:
      raise ValueError("branch_cached() needs a block with attention.")
    attn_out, kv = self.attn.attend_cached(self.attn_norm(x), positions, cache,
                                           causal=self.spec.causal)
    return self._branch_after_attention(x, attn_out), kv

  def __call__(self, x: jax.Array, *, positions=None, segment_ids=None
               ) -> jax.Array:
    """x `[batch, seq, dim]` (MLP-only: `[batch, ..., dim]`) -> the same shape."""
    if self.spec.norm == "pre":
      return x + self.branch(x, positions=positions, segment_ids=segment_ids)
    h = x
    if self.attn is not None:
      kwargs = dict(causal=self.spec.causal, positions=positions,
                    segment_ids=segment_ids)
      h = self.attn_norm(
          x + self._gated(self.attn_gate, self.attn(x, **kwargs)))
    return self.mlp_norm(h + self._gated(self.mlp_gate, self.mlp(h)))


def summed_branches(blocks, x: jax.Array, *, positions=None,
                    segment_ids=None) -> jax.Array:
  """R(x) of a stack of pre-norm blocks: their residual updates, summed.

  Equals stack(x) - x, without the cancellation of that subtraction.
  """
  total = jnp.zeros_like(x)
  for block in blocks:
    total = total + block.branch(x + total, positions=positions,
                                 segment_ids=segment_ids)
  return total
