"""Feed-forward blocks: ReLU^2 (0.5 relu(x)^2) and SwiGLU, without biases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn import initializers
from attractor_jax.nn.dense import dense

KINDS = ("relu2", "swiglu")


class MLP(nnx.Module):
  """`relu2`: W_out 0.5 relu(W_in x)^2; `swiglu`: W_out (silu(W_g x) * W_u x)."""

  def __init__(self, dim: int, hidden: int, *, kind: str = "relu2",
               init_std: float = 0.02, out_init_scale: float = 0.0,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if kind not in KINDS:
      raise ValueError(f"Unknown MLP kind {kind!r}; expected one of {KINDS}.")
    self.kind, self.dtype = kind, dtype
    init = initializers.truncated_normal(init_std)
    self.w_in = initializers.make_param(rngs, init, (dim, hidden),
                                        ("embed", "mlp"), param_dtype)
    self.w_gate = nnx.data(None)
    if kind == "swiglu":
      self.w_gate = initializers.make_param(rngs, init, (dim, hidden),
                                            ("embed", "mlp"), param_dtype)
    self.w_out = initializers.make_param(
        rngs, initializers.scaled_zero(out_init_scale, init_std),
        (hidden, dim), ("mlp", "embed"), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    h = dense(x, self.w_in[...].astype(self.dtype))
    if self.kind == "relu2":
      h = 0.5 * jnp.square(jax.nn.relu(h))
    else:
      h = jax.nn.silu(dense(x, self.w_gate[...].astype(self.dtype))) * h
    return dense(h, self.w_out[...].astype(self.dtype))
