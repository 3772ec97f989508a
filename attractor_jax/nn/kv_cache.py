"""Key/value caches for autoregressive decoding.

A cache holds the keys and values of the positions decoded so far, in a
fixed-size buffer so that every decoding step compiles once. All sequences of
a batch share one length (prompts of equal length, decoded in lockstep).

A cache cannot be overrun. An append that does not fit raises at once when the
cache's length is known (eager code); under `jit` the write is refused (the
cache keeps its contents and length) and the cache's sticky `overflowed` flag
is set, which `check_not_overflowed` turns into an error once the values are
back on the host (`generation.generate` does this).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class KVCache(NamedTuple):
  """Keys and values `[batch, max_len, heads, head_dim]` and their positions.

  Attributes:
    k, v: the cached keys and values; slots at or after `length` are unused.
    positions: int32 `[batch, max_len]`, the position of each slot.
    length: int32 scalar, filled slots.
    overflowed: bool scalar, set (and kept) once an append did not fit; that
      append and every later one that did not fit were not written.
  """

  k: jax.Array
  v: jax.Array
  positions: jax.Array
  length: jax.Array
  overflowed: jax.Array

  @classmethod
  def empty(cls, batch: int, max_len: int, num_heads: int, head_dim: int,
            dtype=jnp.float32) -> "KVCache":
    shape = (batch, max_len, num_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
               jnp.zeros((batch, max_len), jnp.int32),
               jnp.zeros((), jnp.int32), jnp.zeros((), bool))

  @property
  def max_len(self) -> int:
    return self.k.shape[1]

  def valid(self) -> jax.Array:
    """bool `[max_len]`: which slots hold a real key."""
    return jnp.arange(self.max_len, dtype=jnp.int32) < self.length

  def append(self, k: jax.Array, v: jax.Array, positions: jax.Array
             ) -> "KVCache":
    """Writes `[batch, new, heads, head_dim]` keys/values after the filled slots.

    Raises:
      ValueError: when the new positions do not fit and the cache's length is
        concrete (outside `jit`), or when `new > max_len`. Under `jit` a write
        that does not fit is refused and `overflowed` is set instead.
    """
    new = k.shape[1]
    if new > self.max_len:
      check_room(0, new, self.max_len)
    if not isinstance(self.length, jax.core.Tracer):
      check_room(int(self.length), new, self.max_len)
    length = self.length.astype(jnp.int32)
    fits = length + new <= self.max_len
    # The write starts where it stays in bounds (dynamic_update_slice would
    # clamp the start anyway); a write that does not fit writes back the slots
    # already there, so nothing is overwritten.
    start = jnp.minimum(length, self.max_len - new)
    zero = jnp.zeros((), jnp.int32)

    def put(buffer, data):
      index = (zero, start) + (zero,) * (buffer.ndim - 2)
      data = data.astype(buffer.dtype)
      kept = lax.dynamic_slice(buffer, index, data.shape)
      return lax.dynamic_update_slice(buffer, jnp.where(fits, data, kept),
                                      index)

    return KVCache(put(self.k, k), put(self.v, v),
                   put(self.positions, positions),
                   jnp.where(fits, length + new, length),
                   self.overflowed | ~fits)


def check_room(cache_length: int, new_tokens: int, max_len: int) -> None:
  """Raises when `new_tokens` more positions would not fit in the cache."""
  if cache_length + new_tokens > max_len:
    raise ValueError(
        f"The KV cache holds {max_len} positions; {cache_length} are used and "
        f"{new_tokens} more were requested. Build it with a larger max_len.")


def _caches(tree: Any) -> list[KVCache]:
  return [leaf for leaf in jax.tree.leaves(
      tree, is_leaf=lambda x: isinstance(x, KVCache))
          if isinstance(leaf, KVCache)]


def any_overflowed(tree: Any) -> jax.Array:
  """bool scalar: whether any KVCache in a pytree of caches overflowed."""
  flags = [cache.overflowed for cache in _caches(tree)]
  return jnp.any(jnp.stack(flags)) if flags else jnp.zeros((), bool)


def check_not_overflowed(tree: Any) -> None:
  """Raises ValueError if any KVCache in `tree` overflowed (syncs the host).

  Call it on the caches a jitted decoding loop returns: writes past a cache's
  capacity were refused there, so every later position's logits are wrong.
  """
  caches = _caches(tree)
  if not caches or not bool(any_overflowed(caches)):
    return
  cache = next(c for c in caches if bool(c.overflowed))
  raise ValueError(
      f"A KV cache of {cache.max_len} positions overflowed: an append did not "
      f"fit after {int(cache.length)} filled positions and was refused, so "
      "the logits computed from then on are wrong. Build the caches with a "
      "larger max_len.")
