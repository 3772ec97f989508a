"""Statistics of the backward pass, carried out through a gradient.

A custom_vjp backward rule can only return cotangents, so `fixed_point` takes
an optional `backward_probe`: a small float32 vector that the forward ignores
and whose cotangent the backward fills with its solve's statistics. Take the
gradient with respect to the probe too and read it with `backward_stats`.
Cotangents add up, so one probe shared by several fixed points (one per layer)
reports totals over all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from attractor_jax.solvers.stats import SolverStats

_FIELDS = ("examples", "iterations", "residual", "not_converged", "nonfinite",
           "diverged")


class BackwardStats(NamedTuple):
  """Totals over every backward solve that shared the probe.

  Attributes:
    examples: examples whose cotangent was computed.
    mean_iterations: mean backward solver steps per example (0 for modes that
      solve nothing: onestep, jfb, phantom).
    mean_residual: mean final residual of the backward solve, relative to
      the scale of its start (see `SolverStats.residual`).
    not_converged: examples whose backward solve missed its tolerance
      (including the nonfinite and diverged ones).
    nonfinite: examples whose backward solve produced NaN or Inf.
    diverged: examples whose backward solve ran away (`SolverStats.diverged`).
  """

  examples: jax.Array
  mean_iterations: jax.Array
  mean_residual: jax.Array
  not_converged: jax.Array
  nonfinite: jax.Array
  diverged: jax.Array


def backward_probe() -> jax.Array:
  """A fresh (zero) probe to pass as `fixed_point(..., backward_probe=...)`."""
  return jnp.zeros((len(_FIELDS),), jnp.float32)


def probe_cotangent(stats: SolverStats, probe: jax.Array) -> jax.Array:
  """The probe's cotangent that reports one backward solve."""
  residual = jnp.where(jnp.isfinite(stats.residual), stats.residual, 0.0)
  values = jnp.stack([
      jnp.asarray(stats.iterations.shape[0], jnp.float32),
      jnp.sum(stats.iterations).astype(jnp.float32),
      jnp.sum(residual).astype(jnp.float32),
      jnp.sum(~stats.converged).astype(jnp.float32),
      jnp.sum(stats.nonfinite).astype(jnp.float32),
      jnp.sum(stats.diverged).astype(jnp.float32),
  ])
  return values.astype(probe.dtype)


def probe_cotangent_without_solve(v: jax.Array, probe: jax.Array) -> jax.Array:
  """The probe's cotangent for a backward mode that solves nothing."""
  return jnp.zeros_like(probe).at[0].set(v.shape[0])


def backward_stats(probe_gradient: jax.Array) -> BackwardStats:
  """Reads the gradient with respect to a `backward_probe()`."""
  if probe_gradient.shape != (len(_FIELDS),):
    raise ValueError(
        f"Expected the gradient of a backward_probe() of shape "
        f"({len(_FIELDS)},); got shape {probe_gradient.shape}.")
  examples = probe_gradient[0]
  per_example = jnp.maximum(examples, 1.0)
  return BackwardStats(
      examples=examples,
      mean_iterations=probe_gradient[1] / per_example,
      mean_residual=probe_gradient[2] / per_example,
      not_converged=probe_gradient[3],
      nonfinite=probe_gradient[4],
      diverged=probe_gradient[5])
