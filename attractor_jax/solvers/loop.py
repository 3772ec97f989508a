"""The on-device solve loop shared by every solver.

`solve` runs a `lax.while_loop` that stops as soon as every example is done
(converged after `min_iter`, or non-finite) or at `max_iter`; `solve_unrolled`
runs the same step as a fixed-length `lax.scan` so reverse-mode autodiff can
go through it (baselines and tests). Neither syncs with the host.

Per step, each example that is not done takes the solver's proposal; a done
example keeps its state, residual and iteration count. The map is evaluated on
the whole batch, so it must treat examples independently.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from attractor_jax.solvers import stats as stats_lib
from attractor_jax.solvers.base import FixedPointSolver

Map = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """Stopping rule and bookkeeping of a solve.

  Attributes:
    max_iter: most solver steps (each costs one evaluation of the map).
    tol: an example converges when ||f(y) - y|| / ||y|| <= tol.
    min_iter: no example stops before this many steps.
    track_best: return each example's lowest-residual iterate rather than
      its last one (the last finite one is returned after a NaN either way).
    trace: also record the residual of every step.
  """

  max_iter: int = 50
  tol: float = 1e-4
  min_iter: int = 0
  track_best: bool = True
  trace: bool = False

  def __post_init__(self):
    if self.max_iter < 0:
      raise ValueError(f"max_iter must be >= 0; got {self.max_iter}.")
    if not 0 <= self.min_iter <= max(self.max_iter, 0):
      raise ValueError(
          f"min_iter must lie in [0, max_iter={self.max_iter}]; "
          f"got {self.min_iter}.")
    if not self.tol > 0:
      raise ValueError(f"tol must be > 0; got {self.tol}.")


class _State(NamedTuple):
  step: jax.Array
  y: jax.Array
  g: jax.Array
  residual: jax.Array
  iterations: jax.Array
  done: jax.Array
  nonfinite: jax.Array
  best_y: jax.Array
  best_residual: jax.Array
  num_f_evals: jax.Array
  memory: Any
  trace: Optional[jax.Array]


def _is_done(residual, nonfinite, step, options):
  converged = residual <= options.tol
  return (converged & (step >= options.min_iter)) | nonfinite


def _initial_state(f: Map, y0: jax.Array, solver: FixedPointSolver,
                   options: LoopOptions) -> _State:
  g0 = f(y0) - y0
  residual = stats_lib.relative_residual(y0, g0)
  nonfinite = ~jnp.isfinite(residual)
  step = jnp.zeros((), jnp.int32)
  trace = None
  if options.trace:
    trace = jnp.full((options.max_iter + 1,) + residual.shape, jnp.nan,
                     residual.dtype).at[0].set(residual)
  return _State(
      step=step, y=y0, g=g0, residual=residual,
      iterations=jnp.zeros(residual.shape, jnp.int32),
      done=_is_done(residual, nonfinite, step, options),
      nonfinite=nonfinite,
      best_y=y0,
      best_residual=jnp.where(nonfinite, jnp.inf, residual),
      num_f_evals=jnp.ones((), jnp.int32),
      memory=solver.init(y0, g0),
      trace=trace)


def _step(f: Map, solver: FixedPointSolver, options: LoopOptions,
          state: _State) -> _State:
  active = ~state.done
  proposal, memory = solver.propose(state.memory, state.y, state.g, state.step)
  y = jnp.where(active[:, None], proposal, state.y)
  g = jnp.where(active[:, None], f(y) - y, state.g)
  residual = jnp.where(active, stats_lib.relative_residual(y, g),
                       state.residual)
  nonfinite = state.nonfinite | (active & ~jnp.isfinite(residual))
  improved = active & (residual < state.best_residual)     # False for NaN
  step = state.step + 1
  trace = state.trace
  if trace is not None:
    trace = trace.at[step].set(residual)
  return _State(
      step=step, y=y, g=g, residual=residual,
      iterations=state.iterations + active.astype(jnp.int32),
      done=_is_done(residual, nonfinite, step, options),
      nonfinite=nonfinite,
      best_y=jnp.where(improved[:, None], y, state.best_y),
      best_residual=jnp.where(improved, residual, state.best_residual),
      num_f_evals=state.num_f_evals + 1,
      memory=memory, trace=trace)


def _finish(state: _State, options: LoopOptions
            ) -> tuple[jax.Array, stats_lib.SolverStats]:
  use_best = (jnp.ones_like(state.nonfinite) if options.track_best
              else state.nonfinite)
  y = jnp.where(use_best[:, None], state.best_y, state.y)
  residual = jnp.where(use_best, state.best_residual, state.residual)
  residual = jnp.where(jnp.isinf(residual) & state.nonfinite, jnp.nan,
                       residual)
  converged = (residual <= options.tol) & ~state.nonfinite
  return y, stats_lib.SolverStats(
      iterations=state.iterations, residual=residual, converged=converged,
      nonfinite=state.nonfinite, num_f_evals=state.num_f_evals,
      trace=state.trace)


def _unsolved(y0, options):
  trace_length = 1 if options.trace else None
  return y0, stats_lib.unsolved_stats(y0.shape[0], trace_length)


def solve(f: Map, y0: jax.Array, solver: FixedPointSolver,
          options: LoopOptions) -> tuple[jax.Array, stats_lib.SolverStats]:
  """Solves y = f(y) for a `[batch, dim]` state with a while_loop.

  With `max_iter=0` nothing is evaluated: y0 comes back with NaN residuals.
  """
  if options.max_iter == 0:
    return _unsolved(y0, options)
  state = _initial_state(f, y0, solver, options)

  def cond(state):
    return (state.step < options.max_iter) & ~jnp.all(state.done)

  state = lax.while_loop(cond, lambda s: _step(f, solver, options, s), state)
  return _finish(state, options)


def solve_unrolled(f: Map, y0: jax.Array, solver: FixedPointSolver,
                   options: LoopOptions
                   ) -> tuple[jax.Array, stats_lib.SolverStats]:
  """Like `solve`, but always runs `max_iter` steps in a differentiable scan.

  Done examples are frozen exactly as in `solve`, so both give the same
  values; reverse-mode memory grows linearly with `max_iter`.
  """
  if options.max_iter == 0:
    return _unsolved(y0, options)
  state = _initial_state(f, y0, solver, options)
  state, _ = lax.scan(lambda s, _: (_step(f, solver, options, s), None),
                      state, None, length=options.max_iter)
  return _finish(state, options)
