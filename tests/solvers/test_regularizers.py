"""jacobian_frobenius_penalty and spectral_radius on maps with known J."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attractor_jax.solvers import jacobian_frobenius_penalty
from attractor_jax.solvers import spectral_radius

BATCH = 4
DIM = 8


def linear_map(a, y, c):
  return y @ a.T + c


def scaled_map(params, y, c):
  """J = s_i I for example i: the scales live in the context."""
  del params
  return y * c["s"][:, None] + c["b"]


def _orthogonal(key, dim):
  q, _ = jnp.linalg.qr(jax.random.normal(key, (dim, dim)))
  return q


def _linear_problem(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  a = jax.random.normal(k1, (DIM, DIM)) / DIM ** 0.5
  y = jax.random.normal(k2, (BATCH, DIM))
  c = jax.random.normal(k3, (BATCH, DIM))
  return a, y, c


# Hutchinson estimate of ||J||_F^2 / dim.


@jax.jit
def _linear_penalty_and_grad(a, y, c):
  """The penalty [batch], and the gradient of its batch mean w.r.t. a."""
  def penalty(a):
    return jacobian_frobenius_penalty(linear_map, a, y, c, jax.random.key(1),
                                      num_samples=4096)
  return penalty(a), jax.grad(lambda a: jnp.mean(penalty(a)))(a)


def test_frobenius_penalty_of_linear_map():
  a, y, c = _linear_problem()
  penalty, _ = _linear_penalty_and_grad(a, y, c)
  exact = jnp.sum(a ** 2) / DIM
  assert penalty.shape == (BATCH,) and penalty.dtype == jnp.float32
  np.testing.assert_allclose(penalty, exact, rtol=0.1)
  np.testing.assert_allclose(jnp.mean(penalty), exact, rtol=0.05)
  # Examples draw independent noise.
  assert len(set(np.asarray(penalty).tolist())) == BATCH


def test_frobenius_penalty_single_sample_shape():
  a, y, c = _linear_problem()
  penalty = jacobian_frobenius_penalty(linear_map, a, y, c, jax.random.key(2))
  assert penalty.shape == (BATCH,) and penalty.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(penalty)) & jnp.all(penalty > 0))


def test_frobenius_penalty_gradient_is_2a_over_dim():
  a, y, c = _linear_problem()
  _, grad = _linear_penalty_and_grad(a, y, c)
  expected = 2.0 * a / DIM
  assert grad.shape == a.shape
  err = jnp.linalg.norm(grad - expected) / jnp.linalg.norm(expected)
  assert float(err) < 0.1, float(err)


def test_frobenius_penalty_flows_to_the_context():
  """With J = s_i I the penalty is s_i^2 and its gradient 2 s_i."""
  s = jnp.array([0.1, 0.5, 1.0, 2.0])
  y = jax.random.normal(jax.random.key(4), (BATCH, 64))
  c = {"s": s, "b": jnp.zeros((BATCH, 64))}

  def penalty(c):
    return jacobian_frobenius_penalty(scaled_map, None, y, c,
                                      jax.random.key(5), num_samples=512)

  value, grad = jax.jit(lambda c: (
      penalty(c), jax.grad(lambda c: jnp.sum(penalty(c)))(c)))(c)
  np.testing.assert_allclose(value, s ** 2, rtol=0.05)
  np.testing.assert_allclose(grad["s"], 2 * s, rtol=0.05)
  np.testing.assert_array_equal(grad["b"], jnp.zeros_like(c["b"]))


def test_frobenius_penalty_rejects_zero_samples():
  a, y, c = _linear_problem()
  with pytest.raises(ValueError, match="num_samples"):
    jacobian_frobenius_penalty(linear_map, a, y, c, jax.random.key(0),
                               num_samples=0)


# Power-iteration spectral radius.


@jax.jit
def _radius(a):
  _, y, c = _linear_problem()
  return spectral_radius(linear_map, a, y, c, jax.random.key(6),
                         num_iterations=200)


def test_spectral_radius_symmetric():
  q = _orthogonal(jax.random.key(7), DIM)
  eigenvalues = jnp.array([-0.9, 0.6, 0.5, -0.4, 0.3, 0.2, 0.1, 0.05])
  a = q @ jnp.diag(eigenvalues) @ q.T
  radius = _radius(a)
  assert radius.shape == (BATCH,) and radius.dtype == jnp.float32
  np.testing.assert_allclose(radius, 0.9, rtol=0.02)


def _rotation_block(r, theta):
  return r * jnp.array([[jnp.cos(theta), -jnp.sin(theta)],
                        [jnp.sin(theta), jnp.cos(theta)]])


def test_spectral_radius_complex_pair():
  """Dominant eigenvalues r e^{+-i theta}: the iterate keeps rotating."""
  r = 0.8
  block = jnp.zeros((DIM, DIM)).at[:2, :2].set(_rotation_block(r, 1.0))
  block = block + jnp.diag(jnp.array([0, 0, 0.5, -0.4, 0.3, 0.2, 0.1, 0.0]))
  q = _orthogonal(jax.random.key(8), DIM)
  a = q @ block @ q.T
  eigenvalue_moduli = jnp.abs(jnp.linalg.eigvals(a))
  np.testing.assert_allclose(jnp.max(eigenvalue_moduli), r, rtol=1e-5)
  np.testing.assert_allclose(_radius(a), r, rtol=0.03)
  # Not just the largest singular value: a non-normal similar matrix keeps
  # the spectral radius but not the norm.
  s = jnp.eye(DIM) + 0.4 * jax.random.normal(jax.random.key(9), (DIM, DIM))
  skewed = s @ a @ jnp.linalg.inv(s)
  assert float(jnp.linalg.norm(skewed, ord=2)) > 1.2 * r
  np.testing.assert_allclose(_radius(skewed), r, rtol=0.05)


def test_spectral_radius_has_no_gradient():
  a, y, c = _linear_problem()
  grad = jax.grad(lambda a: jnp.sum(spectral_radius(
      linear_map, a, y, c, jax.random.key(10))))(a)
  np.testing.assert_array_equal(grad, jnp.zeros_like(a))
