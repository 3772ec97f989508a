"""Training memory of `fixed_point` does not grow with the iteration count.

Compares the compiled temporary memory of a jitted gradient step at
max_iter=4 and max_iter=64, with every step forced (min_iter = max_iter).
"""

import jax
import jax.numpy as jnp
import pytest

from attractor_jax import fixed_point

BATCH = 32
DIM = 128
STEPS = (4, 64)


def _map(w, y, c):
  return jnp.tanh(y @ w + c)


def _inputs():
  k1, k2 = jax.random.split(jax.random.key(0))
  w = jax.random.normal(k1, (DIM, DIM)) * (0.5 / DIM ** 0.5)
  c = jax.random.normal(k2, (BATCH, DIM))
  return w, c


def _temp_bytes(backward, max_iter, solver):
  w, c = _inputs()

  def loss(w, c):
    y_star, _ = fixed_point(_map, w, c, jnp.zeros_like(c), solver=solver,
                            backward=backward, max_iter=max_iter,
                            min_iter=max_iter, tol=1e-30,
                            backward_max_iter=max_iter, backward_tol=1e-30,
                            backward_solver=solver,
                            on_backward_failure="ignore")
    return jnp.sum(y_star ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, c).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("memory_analysis() is not available on this backend")
  return analysis.temp_size_in_bytes


@pytest.mark.parametrize("backward,solver", [
    ("implicit", "anderson"), ("onestep", "anderson"),
])
@pytest.mark.heavy
def test_memory_is_flat_in_max_iter(backward, solver):
  few, many = (_temp_bytes(backward, n, solver) for n in STEPS)
  state_bytes = BATCH * DIM * 4
  # Equal up to a few percent or a couple of state-sized buffers.
  assert many <= few * 1.05 + 2 * state_bytes, (few, many)


def test_unrolled_memory_grows_with_max_iter():
  few, many = (_temp_bytes("unrolled", n, "picard") for n in STEPS)
  assert many > 4 * few, (few, many)
  # At least one state-sized residual per extra step is kept.
  assert many - few >= (STEPS[1] - STEPS[0]) * BATCH * DIM * 4, (few, many)
