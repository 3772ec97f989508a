"""The `implicit` gradient against jaxopt's implicit differentiation."""

import functools

import jax
import jax.numpy as jnp
import pytest

from attractor_jax import fixed_point

jaxopt = pytest.importorskip("jaxopt")

BATCH = 4
DIM = 6


def tanh_map(w, y, c):
  return jnp.tanh(y @ w + c)


def _problem():
  k1, k2 = jax.random.split(jax.random.key(0))
  w = jax.random.normal(k1, (DIM, DIM))
  w = w * (0.6 / jnp.linalg.norm(w, ord=2))
  c = jax.random.normal(k2, (BATCH, DIM))
  return w, c


def _loss(y):
  return jnp.sum(jnp.cos(2.0 * y) + y)


def _rel_err(a, b):
  a = jnp.concatenate([jnp.ravel(x) for x in a])
  b = jnp.concatenate([jnp.ravel(x) for x in b])
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _attractor_solve(w, c):
  y_star, _ = fixed_point(tanh_map, w, c, jnp.zeros_like(c),
                          backward="implicit", max_iter=200, tol=1e-7,
                          backward_tol=1e-7, on_backward_failure="ignore")
  return y_star


def _jaxopt_iteration_solve(w, c):
  solver = jaxopt.FixedPointIteration(
      fixed_point_fun=lambda y, w, c: tanh_map(w, y, c), maxiter=200,
      tol=1e-7, implicit_diff=True)
  return solver.run(jnp.zeros_like(c), w, c).params


def _picard(y, w, c):
  return jax.lax.fori_loop(0, 200, lambda _, y: tanh_map(w, y, c), y)


_jaxopt_custom_solve = jaxopt.implicit_diff.custom_fixed_point(
    lambda y, w, c: tanh_map(w, y, c),
    solve=functools.partial(jaxopt.linear_solve.solve_gmres, tol=1e-9))(
        lambda y0, w, c: jax.lax.stop_gradient(_picard(y0, w, c)))


def _value_and_grads(solve):
  return jax.jit(jax.value_and_grad(lambda w, c: _loss(solve(w, c)),
                                    argnums=(0, 1)))


def test_implicit_gradient_matches_jaxopt():
  w, c = _problem()
  value, grad = _value_and_grads(_attractor_solve)(w, c)
  references = {
      "FixedPointIteration": _jaxopt_iteration_solve,
      "custom_fixed_point":
          lambda w, c: _jaxopt_custom_solve(jnp.zeros_like(c), w, c),
  }
  for name, solve in references.items():
    expected_value, expected = _value_and_grads(solve)(w, c)
    assert abs(float(value - expected_value)) <= 1e-5 * abs(
        float(expected_value)), name
    assert float(jnp.linalg.norm(expected[1])) > 1e-2, name
    err = _rel_err(grad, expected)
    assert err <= 1e-5, (name, err)
