"""Key/value caches for autoregressive decoding.

A cache holds the keys and values of the positions decoded so far, in a
fixed-size buffer so that every decoding step compiles once. All sequences of
a batch share one length (prompts of equal length, decoded in lockstep).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class KVCache(NamedTuple):
  """Keys and values `[batch, max_len, heads, head_dim]` and their positions.

  Attributes:
    k, v: the cached keys and values; slots at or after `length` are unused.
    positions: int32 `[batch, max_len]`, the position of each slot.
    length: int32 scalar, filled slots.
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array
  length: jax.Array

  @classmethod
  def empty(cls, batch: int, max_len: int, num_heads: int, head_dim: int,
            dtype=jnp.float32) -> "KVCache":
    shape = (batch, max_len, num_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.zeros((batch, max_len), jnp.int32),
               jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[1]

  def valid(self) -> jax.Array:
    """bool `[max_len]`: which slots hold a real key."""
    return jnp.arange(self.max_len) < self.length

  def append(self, k: jax.Array, v: jax.Array, positions: jax.Array
             ) -> "KVCache":
    """Writes `[batch, new, heads, head_dim]` keys/values after the filled slots.

    Writing past `max_len` is an error the caller must prevent (checked
    eagerly where the length is known, see `check_room`).
    """
    start = (0, self.length, 0, 0)
    return KVCache(
        lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), start),
        lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), start),
        lax.dynamic_update_slice(self.positions, positions.astype(jnp.int32),
                                 (0, self.length)),
        self.length + k.shape[1])


def check_room(cache_length: int, new_tokens: int, max_len: int) -> None:
  """Raises when `new_tokens` more positions would not fit in the cache."""
  if cache_length + new_tokens > max_len:
    raise ValueError(
        f"The KV cache holds {max_len} positions; {cache_length} are used and "
        f"{new_tokens} more were requested. Build it with a larger max_len.")
