"""What a fixed-point solve reports about itself."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

# Result codes, per example (see `SolverStats.result`).
CONVERGED = 0
MAX_ITER_REACHED = 1
NONFINITE = 2
RESULT_NAMES = {CONVERGED: "converged", MAX_ITER_REACHED: "max_iter_reached",
                NONFINITE: "nonfinite"}

# Floor of the residual's denominator, so a zero state gives a finite ratio.
RESIDUAL_EPS = 1e-12


class SolverStats(NamedTuple):
  """Per-example statistics of one fixed-point solve (a pytree).

  Attributes:
    iterations: int32 `[batch]`, solver steps taken by each example. An example
      stops counting (and its state stops changing) once it has converged.
    residual: float32 `[batch]`, relative residual ||f(y) - y|| / ||y|| of the
      returned iterate.
    converged: bool `[batch]`, residual within tolerance.
    nonfinite: bool `[batch]`, the map produced NaN or Inf for this example;
      its iteration stopped and the best finite iterate was returned.
    num_f_evals: int32 scalar, evaluations of the (batched) map, including the
      one that measures the residual of y0.
    trace: optional float32 `[max_iter + 1, batch]`, the residual after each
      step (row 0 is y0's); rows of steps the loop never ran are NaN.
  """

  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  nonfinite: jax.Array
  num_f_evals: jax.Array
  trace: Optional[jax.Array] = None

  @property
  def result(self) -> jax.Array:
    """int32 `[batch]` code: CONVERGED, MAX_ITER_REACHED or NONFINITE."""
    return jnp.where(self.nonfinite, NONFINITE,
                     jnp.where(self.converged, CONVERGED, MAX_ITER_REACHED))

  def summary(self) -> dict[str, jax.Array]:
    """Batch-level scalars for logging (means over the batch)."""
    return {
        "iterations_mean": jnp.mean(self.iterations.astype(jnp.float32)),
        "iterations_max": jnp.max(self.iterations),
        "residual_mean": jnp.mean(self.residual),
        "residual_max": jnp.max(self.residual),
        "converged_fraction": jnp.mean(self.converged.astype(jnp.float32)),
        "nonfinite_count": jnp.sum(self.nonfinite.astype(jnp.int32)),
        "num_f_evals": self.num_f_evals,
    }


def unsolved_stats(batch_size: int, trace_length: Optional[int] = None
                   ) -> SolverStats:
  """Stats of a solve that ran no step and measured nothing (max_iter=0).

  The residual is NaN (never measured, not zero) and no example is marked
  converged.
  """
  trace = None
  if trace_length is not None:
    trace = jnp.full((trace_length, batch_size), jnp.nan, jnp.float32)
  return SolverStats(
      iterations=jnp.zeros((batch_size,), jnp.int32),
      residual=jnp.full((batch_size,), jnp.nan, jnp.float32),
      converged=jnp.zeros((batch_size,), bool),
      nonfinite=jnp.zeros((batch_size,), bool),
      num_f_evals=jnp.zeros((), jnp.int32),
      trace=trace)


def relative_residual(y: jax.Array, g: jax.Array) -> jax.Array:
  """||g|| / ||y|| per row of `[batch, dim]` matrices, in float32 or wider."""
  dtype = jnp.promote_types(jnp.result_type(y, g), jnp.float32)
  y = y.astype(dtype)
  g = g.astype(dtype)
  g_norm = jnp.sqrt(jnp.sum(g * g, axis=1))
  y_norm = jnp.sqrt(jnp.sum(y * y, axis=1))
  # A state that overflowed is not converged, however small the ratio.
  return jnp.where(jnp.isfinite(y_norm), g_norm / (y_norm + RESIDUAL_EPS),
                   jnp.nan)
