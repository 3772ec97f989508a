"""What a fixed-point solve reports about itself."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

# Result codes, per example (see `SolverStats.result`).
CONVERGED = 0
MAX_ITER_REACHED = 1
NONFINITE = 2
DIVERGED = 3
RESULT_NAMES = {CONVERGED: "converged", MAX_ITER_REACHED: "max_iter_reached",
                NONFINITE: "nonfinite", DIVERGED: "diverged"}


class SolverStats(NamedTuple):
  """Per-example statistics of one fixed-point solve (a pytree).

  Every residual is measured against a scale fixed when the solve starts,

      scale = max(||y0||, ||f(y0)||)      (per example, Euclidean norms),

  so it cannot shrink because the iterate runs away. An example is converged
  when ||f(y) - y|| <= atol + tol * scale (see `LoopOptions`).

  Attributes:
    iterations: int32 `[batch]`, solver steps taken by each example. An example
      stops counting (and its state stops changing) once it is done.
    residual: float32 (float64 under x64) `[batch]`, ||f(y) - y|| / scale of
      the returned iterate.
    converged: bool `[batch]`, the returned iterate is within tolerance (and
      the example is neither nonfinite nor diverged).
    nonfinite: bool `[batch]`, the map produced NaN or Inf for this example;
      its iteration stopped and the best finite iterate was returned.
    num_f_evals: int32 scalar, evaluations of the (batched) map, including the
      one that measures the residual of y0.
    diverged: bool `[batch]`, the iterate or its residual grew past
      `divergence_factor * scale`; its iteration stopped and the best
      (lowest-residual) iterate was returned. None (stats built by hand
      without it) reads as all False.
    trace: optional float32 `[max_iter + 1, batch]`, the residual (as above)
      after each step (row 0 is y0's); rows of steps the loop never ran are
      NaN.
  """

  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  nonfinite: jax.Array
  num_f_evals: jax.Array
  diverged: Optional[jax.Array] = None
  trace: Optional[jax.Array] = None

  def _diverged(self) -> jax.Array:
    if self.diverged is None:
      return jnp.zeros_like(self.nonfinite)
    return self.diverged

  @property
  def result(self) -> jax.Array:
    """int32 `[batch]`: CONVERGED, MAX_ITER_REACHED, NONFINITE or DIVERGED."""
    return jnp.where(
        self.nonfinite, NONFINITE,
        jnp.where(self._diverged(), DIVERGED,
                  jnp.where(self.converged, CONVERGED, MAX_ITER_REACHED)))

  def summary(self) -> dict[str, jax.Array]:
    """Batch-level scalars for logging (means over the batch)."""
    return {
        "iterations_mean": jnp.mean(self.iterations.astype(jnp.float32)),
        "iterations_max": jnp.max(self.iterations),
        "residual_mean": jnp.mean(self.residual),
        "residual_max": jnp.max(self.residual),
        "converged_fraction": jnp.mean(self.converged.astype(jnp.float32)),
        "nonfinite_count": jnp.sum(self.nonfinite.astype(jnp.int32)),
        "diverged_count": jnp.sum(self._diverged().astype(jnp.int32)),
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
      diverged=jnp.zeros((batch_size,), bool),
      trace=trace)


def stats_dtype(x: jax.Array):
  """float32, or x's dtype when wider: residuals never go below float32."""
  return jnp.promote_types(x.dtype, jnp.float32)


def row_norm(x: jax.Array) -> jax.Array:
  """||x|| per row of a `[batch, dim]` matrix, in float32 or wider.

  Bookkeeping only: no gradient flows through it (the norm's derivative at a
  zero row is NaN, which would poison an unrolled solve's gradient).
  """
  x = jax.lax.stop_gradient(x).astype(stats_dtype(x))
  return jnp.sqrt(jnp.sum(x * x, axis=1))


def start_scale(y0: jax.Array, fy0: jax.Array) -> jax.Array:
  """max(||y0||, ||f(y0)||) per example: what every residual is relative to."""
  return jnp.maximum(row_norm(y0), row_norm(fy0))


def safe_scale(scale: jax.Array) -> jax.Array:
  """The scale floored at the dtype's smallest normal number (never 0)."""
  return jnp.maximum(scale, jnp.finfo(scale.dtype).tiny)
