"""Rotary position embeddings, in float32, in both pairing conventions.

`half`: dimension i is paired with i + head_dim/2 (GPT-NeoX, LLaMA in HF).
`interleaved`: dimension 2i is paired with 2i + 1 (the original RoPE paper,
GPT-J). Checkpoints trained with one convention need the same one here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONVENTIONS = ("half", "interleaved")


def rotary_angles(positions: jax.Array, head_dim: int, theta: float
                  ) -> tuple[jax.Array, jax.Array]:
  """sin and cos of shape positions.shape + (head_dim // 2,), float32."""
  if head_dim % 2:
    raise ValueError(f"Rotary embeddings need an even head_dim; got {head_dim}.")
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (theta ** exponents)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.sin(angles), jnp.cos(angles)


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array,
                 convention: str = "half") -> jax.Array:
  """Rotates x `[batch, seq, heads, head_dim]` by angles `[batch, seq, d/2]`."""
  if convention not in CONVENTIONS:
    raise ValueError(f"Unknown rotary convention {convention!r}; expected one "
                     f"of {CONVENTIONS}.")
  x32 = x.astype(jnp.float32)
  sin = sin[..., None, :]
  cos = cos[..., None, :]
  if convention == "half":
    first, second = jnp.split(x32, 2, axis=-1)
  else:
    first, second = x32[..., 0::2], x32[..., 1::2]
  rotated_first = first * cos - second * sin
  rotated_second = second * cos + first * sin
  if convention == "half":
    out = jnp.concatenate([rotated_first, rotated_second], axis=-1)
  else:
    out = jnp.stack([rotated_first, rotated_second], axis=-1).reshape(x.shape)
  return out.astype(x.dtype)
