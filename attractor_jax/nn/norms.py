"""RMSNorm, computed in float32 whatever the activation dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn import initializers


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
  """x / rms(x) over the last axis, in float32."""
  x32 = x.astype(jnp.float32)
  return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learned per-channel scale (init 1)."""

  def __init__(self, dim: int, *, eps: float = 1e-5, learned_scale: bool = True,
               axis_name: str = "embed", param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.eps = eps
    self.scale = nnx.data(None)
    if learned_scale:
      self.scale = initializers.make_param(
          rngs, jax.nn.initializers.ones, (dim,), (axis_name,), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = rms_normalize(x, self.eps)
    if self.scale is not None:
      y = y * self.scale[...].astype(jnp.float32)
    return y.astype(x.dtype)
