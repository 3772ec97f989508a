"""Jacobian penalty and spectral monitor at a fixed point.

J is the per-example Jacobian df/dy at y (usually y*). Both functions take f in
the same form as `fixed_point`: f(params, y, c), y a batched pytree.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from attractor_jax.solvers import flat as flat_lib

PyTree = Any


def _flat_map_at(f, params, y, c):
  spec = flat_lib.flat_spec(y)
  f_flat = flat_lib.flat_map(f, spec)
  return (lambda y_flat: f_flat(params, y_flat, c)), spec.flatten(y), spec


def jacobian_frobenius_penalty(
    f: Callable[[PyTree, PyTree, PyTree], PyTree], params: PyTree, y: PyTree,
    c: PyTree, key: jax.Array, *, num_samples: int = 1) -> jax.Array:
  """Hutchinson estimate of ||J||_F^2 / dim per example, `[batch]` float32.

  E_eps ||J^T eps||^2 = ||J||_F^2 for eps ~ N(0, I). The estimate is
  differentiable with respect to params and c (a training penalty pushes the
  map towards contraction); y is treated as given, so pass
  `jax.lax.stop_gradient(y_star)` to penalise only through the parameters.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1; got {num_samples}.")
  f_flat, y_flat, spec = _flat_map_at(f, params, y, c)
  _, vjp = jax.vjp(f_flat, y_flat)
  noise = jax.random.normal(key, (num_samples,) + y_flat.shape, y_flat.dtype)
  jt_noise = jax.vmap(lambda eps: vjp(eps)[0])(noise)
  squared = jnp.sum(jt_noise.astype(jnp.float32) ** 2, axis=-1)  # [s, batch]
  return jnp.mean(squared, axis=0) / spec.dim


def spectral_radius(
    f: Callable[[PyTree, PyTree, PyTree], PyTree], params: PyTree, y: PyTree,
    c: PyTree, key: jax.Array, *, num_iterations: int = 20) -> jax.Array:
  """Power-iteration estimate of the spectral radius of J, `[batch]` float32.

  The growth factor ||J v_k|| of normalised iterates is averaged in log space
  over the second half of the iterations, which also settles when the
  dominant eigenvalues are a complex pair. For monitoring: no gradient flows.
  """
  if num_iterations < 2:
    raise ValueError(f"num_iterations must be >= 2; got {num_iterations}.")
  f_flat, y_flat, _ = _flat_map_at(f, params, y, c)
  y_flat = lax.stop_gradient(y_flat)
  _, jvp = jax.linearize(f_flat, y_flat)
  v = jax.random.normal(key, y_flat.shape, y_flat.dtype)
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  burn_in = num_iterations // 2

  def body(i, carry):
    v, log_growth = carry
    jv = jvp(v)
    norm = jnp.linalg.norm(jv, axis=-1)
    log_growth = log_growth + jnp.where(i >= burn_in, jnp.log(norm), 0.0)
    return jv / jnp.maximum(norm, 1e-30)[:, None], log_growth

  _, log_growth = lax.fori_loop(
      0, num_iterations, body,
      (v, jnp.zeros(y_flat.shape[:1], y_flat.dtype)))
  estimate = jnp.exp(log_growth / (num_iterations - burn_in))
  return lax.stop_gradient(estimate.astype(jnp.float32))
