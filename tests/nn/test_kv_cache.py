"""KV caches cannot be overrun: eager appends raise, jitted ones are flagged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attractor_jax.nn import kv_cache
from attractor_jax.nn.kv_cache import KVCache

HEADS, HEAD_DIM = 2, 3


def token(position, batch=1, new=1):
  """Keys/values filled with their position, so slots show what was written."""
  positions = position + jnp.broadcast_to(jnp.arange(new), (batch, new))
  k = jnp.broadcast_to(positions[:, :, None, None].astype(jnp.float32),
                       (batch, new, HEADS, HEAD_DIM))
  return k, -k, positions


def test_appends_fill_slots_in_order():
  cache = KVCache.empty(1, 4, HEADS, HEAD_DIM)
  cache = cache.append(*token(0, new=2))
  cache = cache.append(*token(2))
  assert int(cache.length) == 3 and not bool(cache.overflowed)
  np.testing.assert_array_equal(np.asarray(cache.positions), [[0, 1, 2, 0]])
  np.testing.assert_array_equal(np.asarray(cache.valid()),
                                [True, True, True, False])
  np.testing.assert_array_equal(np.asarray(cache.k[0, :3, 0, 0]), [0, 1, 2])
  kv_cache.check_not_overflowed(cache)      # no error


def test_eager_append_that_does_not_fit_raises_at_once():
  cache = KVCache.empty(1, 4, HEADS, HEAD_DIM).append(*token(0, new=3))
  with pytest.raises(ValueError, match="larger max_len"):
    cache.append(*token(3, new=2))
  with pytest.raises(ValueError, match="larger max_len"):
    KVCache.empty(1, 4, HEADS, HEAD_DIM).append(*token(0, new=5))


def test_jitted_appends_past_capacity_are_refused_and_flagged():
  append = jax.jit(lambda cache, k, v, p: cache.append(k, v, p))
  cache = KVCache.empty(1, 4, HEADS, HEAD_DIM)
  for position in range(6):
    cache = append(cache, *token(position))
    if position == 3:
      assert not bool(cache.overflowed)
  # Before the fix the clamped writes left positions [0, 1, 2, 5].
  np.testing.assert_array_equal(np.asarray(cache.positions), [[0, 1, 2, 3]])
  np.testing.assert_array_equal(np.asarray(cache.k[0, :, 0, 0]), [0, 1, 2, 3])
  np.testing.assert_array_equal(np.asarray(cache.v[0, :, 0, 0]),
                                [0, -1, -2, -3])
  assert int(cache.length) == 4
  assert bool(cache.overflowed)
  with pytest.raises(ValueError, match="overflowed"):
    kv_cache.check_not_overflowed({"backbone": [cache], "head": []})


def test_overflow_flag_is_sticky():
  append = jax.jit(lambda cache, k, v, p: cache.append(k, v, p))
  cache = KVCache.empty(1, 4, HEADS, HEAD_DIM)
  cache = append(cache, *token(0, new=3))
  cache = append(cache, *token(3, new=2))      # refused: 3 + 2 > 4
  assert bool(cache.overflowed) and int(cache.length) == 3
  cache = append(cache, *token(5))             # fits, but the flag stays
  assert bool(cache.overflowed)
  assert bool(kv_cache.any_overflowed([KVCache.empty(1, 2, 1, 1), cache]))


def test_append_works_under_x64():
  with jax.enable_x64(True):
    cache = KVCache.empty(2, 4, HEADS, HEAD_DIM)
    k, v, positions = token(0, batch=2, new=2)
    assert positions.dtype == jnp.int64
    cache = cache.append(k, v, positions)
    cache = jax.jit(lambda c, k, v, p: c.append(k, v, p))(
        cache, *token(2, batch=2))
    assert cache.positions.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(cache.positions[0]),
                                  [0, 1, 2, 0])
    assert int(cache.length) == 3
