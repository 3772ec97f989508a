"""The attractor head's progressive training mode and fixed-count iterate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import AttractorHead


class Scale(nnx.Module):
  """R(x) = w * x: the map f(y) = c + w (y + c) is easy to follow by hand."""

  def __init__(self, w):
    self.w = nnx.Param(jnp.asarray(w, jnp.float32))

  def __call__(self, x):
    return self.w[...] * x


def _head(w=0.5):
  return AttractorHead(residual=[Scale(w)])


def _by_hand(c, w, count):
  y = c
  for _ in range(count):
    y = c + w * (y + c)
  return y


def test_iterate_applies_the_map_count_times():
  c = jnp.arange(6.0).reshape(2, 3, 1)
  head = _head(0.5)
  got = nnx.jit(lambda h, c: h.iterate(c, 4))(head, c)
  np.testing.assert_allclose(got, _by_hand(c, 0.5, 4), rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 3])
def test_gradients_flow_only_through_the_last_steps(steps):
  """d y / d w at y = f^steps(f^n(c)) with the first n detached: the warm
  start counts as a constant, so the gradient is that of `steps`
  applications from it, not of n + steps."""
  c = jnp.full((2, 3, 1), 1.0)
  key = jax.random.key(3)
  max_warm = 7
  n = int(jax.random.randint(key, (), 0, max_warm))
  assert n > 0      # the key is chosen so that the test is not trivial
  head = _head(0.5)

  def loss(head):
    return jnp.sum(head.progressive(c, key=key, max_warm=max_warm,
                                    steps=steps))

  value, grads = nnx.jit(nnx.value_and_grad(loss))(head)
  np.testing.assert_allclose(value, jnp.sum(_by_hand(c, 0.5, n + steps)),
                             rtol=1e-5)
  start = _by_hand(c, 0.5, n)

  def from_start(w):
    y = start
    for _ in range(steps):
      y = c + w * (y + c)
    return jnp.sum(y)

  def through_all(w):
    return jnp.sum(_by_hand(c, w, n + steps))

  truncated = jax.grad(from_start)(0.5)
  np.testing.assert_allclose(grads["blocks"][0]["w"][...], truncated,
                             rtol=1e-5)
  assert abs(float(jax.grad(through_all)(0.5)) - float(truncated)) > 1e-2


def test_progressive_is_deterministic_given_the_key_and_varies_with_it():
  c = jax.random.normal(jax.random.key(0), (2, 5, 1))
  head = _head(0.5)
  run = nnx.jit(lambda h, c, k: h.progressive(c, key=k, max_warm=30,
                                              steps=2))
  a = run(head, c, jax.random.key(1))
  b = run(head, c, jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  outs = {float(jnp.sum(run(head, c, jax.random.key(k)))) for k in range(8)}
  assert len(outs) > 1


def test_progressive_refuses_empty_ranges():
  with pytest.raises(ValueError, match="max_warm"):
    _head().progressive(jnp.ones((1, 2, 1)), key=jax.random.key(0),
                        max_warm=0, steps=1)
