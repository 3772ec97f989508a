"""The on-device solve loop shared by every solver.

`solve` runs a `lax.while_loop` that stops as soon as every example is done
(converged after `min_iter`, non-finite or diverged) or at `max_iter`;
`solve_unrolled` runs the same step in a `lax.scan` of length `max_iter` so
reverse-mode autodiff can go through it (baselines and tests), and skips the
steps after every example is done, as the while loop stops there. Neither
syncs with the host.

Per step, each example that is not done takes the solver's proposal; a done
example keeps its state, residual and iteration count. The map is evaluated on
the whole batch, so it must treat examples independently.

Stopping rule. Residuals are measured against a scale fixed at the start,
scale = max(||y0||, ||f(y0)||) per example. The older ||f(y) - y|| / ||y||
shrinks as the iterate runs away, which let Anderson and Broyden report maps
without a fixed point as converged; a fixed scale cannot run away, and an
example whose iterate or residual grows past `divergence_factor * scale` is
stopped and flagged instead.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from attractor_jax.solvers import stats as stats_lib
from attractor_jax.solvers.base import FixedPointSolver

Map = Callable[[jax.Array], jax.Array]

# ||y|| or ||f(y) - y|| beyond this times the start scale: diverged.
DEFAULT_DIVERGENCE_FACTOR = 1e4


def require_static(name: str, value: Any) -> None:
  """Refuses a traced value for an option that shapes the loop.

  The step limit and stopping rule are fixed when the solve is traced, so a
  max_iter or tol passed through `jax.jit` as an argument cannot work; say so
  instead of failing with a TracerBoolConversionError deep inside.
  """
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"{name} must be a static Python number, but it is a traced value "
        f"({value.aval.str_short()}): it was probably passed through jax.jit "
        "(or vmap, grad, scan) as an argument. The solver's step limit and "
        "stopping rule are fixed when it is traced. Make it static, e.g. "
        f"jax.jit(fn, static_argnames=('{name}',)) or "
        "functools.partial(fn, ...) before jitting, or pass a Python number.")


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """Stopping rule and bookkeeping of a solve.

  With scale = max(||y0||, ||f(y0)||) per example (fixed at the start), the
  reported residual of an iterate y is ||f(y) - y|| / scale, and an example
  converges when

      ||f(y) - y|| <= atol + tol * scale.

  For a contraction with Lipschitz constant L, ||y - y*|| <= ||f(y) - y|| /
  (1 - L) and ||y*|| <= (1 + 2 / (1 - L)) scale, so the scale is within a
  known factor of ||y*|| however far the fixed point lies from y0.

  Attributes:
    max_iter: most solver steps (each costs one evaluation of the map).
    tol: relative tolerance, against the start scale. With tol = atol = 0 no
      example stops on convergence: every example runs exactly max_iter steps
      unless it turns nonfinite or diverges.
    min_iter: no example stops on convergence before this many steps
      (nonfinite and diverged examples stop at once).
    track_best: return each example's lowest-residual iterate rather than
      its last one (nonfinite and diverged examples return their best finite
      iterate either way).
    trace: also record the residual of every step.
    atol: absolute tolerance on ||f(y) - y||, added to tol * scale.
    divergence_factor: an example whose ||y|| or ||f(y) - y|| exceeds
      divergence_factor * scale is stopped and flagged `diverged`; None turns
      the test off. Beyond about tol / eps times the scale (1e3 in float32 at
      tol 1e-4) rounding in f(y) - y already exceeds the tolerance, so a
      residual measured there could not be trusted anyway.
  """

  max_iter: int = 50
  tol: float = 1e-4
  min_iter: int = 0
  track_best: bool = True
  trace: bool = False
  atol: float = 0.0
  divergence_factor: Optional[float] = DEFAULT_DIVERGENCE_FACTOR

  def __post_init__(self):
    for field in dataclasses.fields(self):
      require_static(field.name, getattr(self, field.name))
    if self.max_iter < 0:
      raise ValueError(f"max_iter must be >= 0; got {self.max_iter}.")
    if not 0 <= self.min_iter <= max(self.max_iter, 0):
      raise ValueError(
          f"min_iter must lie in [0, max_iter={self.max_iter}]; "
          f"got {self.min_iter}.")
    if not (self.tol >= 0 and math.isfinite(self.tol)):
      raise ValueError(f"tol must be finite and >= 0; got {self.tol}.")
    if not (self.atol >= 0 and math.isfinite(self.atol)):
      raise ValueError(f"atol must be finite and >= 0; got {self.atol}.")
    if self.divergence_factor is not None and not self.divergence_factor > 1:
      raise ValueError(f"divergence_factor must be > 1 or None; got "
                       f"{self.divergence_factor}.")

  @property
  def stops_on_convergence(self) -> bool:
    """False for tol = atol = 0: every example runs max_iter steps."""
    return self.tol > 0 or self.atol > 0


class _State(NamedTuple):
  step: jax.Array
  y: jax.Array
  g: jax.Array
  g_norm: jax.Array          # ||g|| in float32 or wider
  iterations: jax.Array
  done: jax.Array
  nonfinite: jax.Array
  diverged: jax.Array
  best_y: jax.Array
  best_g_norm: jax.Array     # inf until a finite iterate is seen
  scale: jax.Array           # max(||y0||, ||f(y0)||), floored above 0
  threshold: jax.Array       # atol + tol * scale
  bound: jax.Array           # divergence_factor * scale, or inf
  num_f_evals: jax.Array
  memory: Any
  trace: Optional[jax.Array]


def _is_done(g_norm, nonfinite, diverged, step, threshold, options):
  done = nonfinite | diverged
  if options.stops_on_convergence:
    done = done | ((g_norm <= threshold) & (step >= options.min_iter))
  return done


def _initial_state(f: Map, y0: jax.Array, solver: FixedPointSolver,
                   options: LoopOptions) -> _State:
  fy0 = f(y0)
  g0 = fy0 - y0
  g_norm = stats_lib.row_norm(g0)
  scale = stats_lib.start_scale(y0, fy0)
  nonfinite = ~(jnp.isfinite(scale) & jnp.isfinite(g_norm))
  scale = stats_lib.safe_scale(jnp.where(nonfinite, 0.0, scale))
  threshold = options.atol + options.tol * scale
  factor = (jnp.inf if options.divergence_factor is None
            else options.divergence_factor)
  bound = factor * scale
  diverged = jnp.zeros_like(nonfinite)
  step = jnp.zeros((), jnp.int32)
  trace = None
  if options.trace:
    trace = jnp.full((options.max_iter + 1,) + g_norm.shape, jnp.nan,
                     g_norm.dtype).at[0].set(g_norm / scale)
  return _State(
      step=step, y=y0, g=g0, g_norm=g_norm,
      iterations=jnp.zeros(g_norm.shape, jnp.int32),
      done=_is_done(g_norm, nonfinite, diverged, step, threshold, options),
      nonfinite=nonfinite, diverged=diverged,
      best_y=y0,
      best_g_norm=jnp.where(nonfinite, jnp.inf, g_norm),
      scale=scale, threshold=threshold, bound=bound,
      num_f_evals=jnp.ones((), jnp.int32),
      memory=solver.init(y0, g0),
      trace=trace)


def _step(f: Map, solver: FixedPointSolver, options: LoopOptions,
          state: _State) -> _State:
  active = ~state.done
  proposal, memory = solver.propose(state.memory, state.y, state.g, state.step)
  y = jnp.where(active[:, None], proposal, state.y)
  g = jnp.where(active[:, None], f(y) - y, state.g)
  y_norm = stats_lib.row_norm(y)
  g_norm = jnp.where(active, stats_lib.row_norm(g), state.g_norm)
  finite = jnp.isfinite(y_norm) & jnp.isfinite(g_norm)
  runaway = finite & (jnp.maximum(y_norm, g_norm) > state.bound)
  nonfinite = state.nonfinite | (active & ~finite)
  diverged = state.diverged | (active & runaway)
  # A runaway iterate is never the one returned; NaN compares False.
  improved = active & ~runaway & (g_norm < state.best_g_norm)
  step = state.step + 1
  trace = state.trace
  if trace is not None:
    trace = trace.at[step].set(g_norm / state.scale)
  return _State(
      step=step, y=y, g=g, g_norm=g_norm,
      iterations=state.iterations + active.astype(jnp.int32),
      done=_is_done(g_norm, nonfinite, diverged, step, state.threshold,
                    options),
      nonfinite=nonfinite, diverged=diverged,
      best_y=jnp.where(improved[:, None], y, state.best_y),
      best_g_norm=jnp.where(improved, g_norm, state.best_g_norm),
      scale=state.scale, threshold=state.threshold, bound=state.bound,
      num_f_evals=state.num_f_evals + 1,
      memory=memory, trace=trace)


def _finish(state: _State, options: LoopOptions
            ) -> tuple[jax.Array, stats_lib.SolverStats]:
  failed = state.nonfinite | state.diverged
  use_best = jnp.ones_like(failed) if options.track_best else failed
  y = jnp.where(use_best[:, None], state.best_y, state.y)
  g_norm = jnp.where(use_best, state.best_g_norm, state.g_norm)
  # No finite iterate at all (y0 itself was not): NaN, not an infinite ratio.
  g_norm = jnp.where(jnp.isinf(g_norm) & state.nonfinite, jnp.nan, g_norm)
  converged = (g_norm <= state.threshold) & ~failed
  return y, stats_lib.SolverStats(
      iterations=state.iterations, residual=g_norm / state.scale,
      converged=converged, nonfinite=state.nonfinite,
      num_f_evals=state.num_f_evals, diverged=state.diverged,
      trace=state.trace)


def _unsolved(y0, options):
  trace_length = 1 if options.trace else None
  return y0, stats_lib.unsolved_stats(y0.shape[0], trace_length)


def solve(f: Map, y0: jax.Array, solver: FixedPointSolver,
          options: LoopOptions) -> tuple[jax.Array, stats_lib.SolverStats]:
  """Solves y = f(y) for a `[batch, dim]` state with a while_loop.

  With `max_iter=0` nothing is evaluated: y0 comes back with NaN residuals.
  """
  _check_matrix(y0)
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
  """Like `solve`, but in a `lax.scan` that reverse-mode autodiff goes through.

  Done examples are frozen exactly as in `solve`, and once every example is
  done the remaining steps are skipped (a `lax.cond`: f is not evaluated,
  forward or backward), so both give the same values and stats. Reverse-mode
  memory grows linearly with `max_iter` all the same. Under `jax.vmap` the
  cond becomes a select and every step runs.

  Differentiating a step differentiates the solver's proposal: the solvers
  here hold their mixing weights (Anderson) or inverse-Jacobian estimate
  (Broyden) fixed under autodiff, which keeps gradients bounded but not
  accurate; `fixed_point` allows `unrolled` with Picard only.
  """
  _check_matrix(y0)
  if options.max_iter == 0:
    return _unsolved(y0, options)
  state = _initial_state(f, y0, solver, options)

  def body(state, _):
    state = lax.cond(jnp.all(state.done), lambda s: s,
                     lambda s: _step(f, solver, options, s), state)
    return state, None

  state, _ = lax.scan(body, state, None, length=options.max_iter)
  return _finish(state, options)


def _check_matrix(y0: jax.Array) -> None:
  if jnp.ndim(y0) != 2:
    raise ValueError(
        f"The solve loop works on a [batch, dim] matrix; got shape "
        f"{jnp.shape(y0)}. Use fixed_point for other states (any pytree "
        "with a leading batch axis, or batched=False for a single example).")
