"""`fixed_point`: solve y = f(params, y, c) on device and differentiate it.

With v = dL/dy*, the exact gradient is u^T df/d(params, c) where
u = (I - J^T)^{-1} v and J = df/dy at the fixed point. The backward modes
differ only in how they choose u (or, for `phantom`, what they differentiate):

    implicit   solve u = J^T u + v with a fixed-point solver
    onestep    u = v + J^T v, optionally clipped per example
    jfb        u = v (Jacobian-free backprop)
    phantom    differentiate K damped applications of f from stop_gradient(y*)
    unrolled   reverse-mode through every solver step (memory grows)

All but `unrolled` run through one `jax.custom_vjp`, so a call outside of
differentiation runs only the forward solve, and training memory does not
depend on how many iterations ran.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from attractor_jax.solvers import probe as probe_lib
from attractor_jax.solvers import flat as flat_lib
from attractor_jax.solvers import loop
from attractor_jax.solvers.anderson import Anderson
from attractor_jax.solvers.base import FixedPointSolver
from attractor_jax.solvers.broyden import Broyden
from attractor_jax.solvers.picard import Picard
from attractor_jax.solvers.stats import SolverStats

PyTree = Any
SOLVERS = {"picard": Picard, "anderson": Anderson, "broyden": Broyden}
BACKWARD_MODES = ("implicit", "onestep", "jfb", "phantom", "unrolled")
ON_BACKWARD_FAILURE = ("warn", "nan", "ignore")

logger = logging.getLogger("attractor_jax")


def make_solver(solver: Union[str, FixedPointSolver], **kwargs
                ) -> FixedPointSolver:
  """A solver from its name and constructor arguments, or the solver itself."""
  if not isinstance(solver, str):
    if kwargs:
      raise ValueError(
          f"Solver options {sorted(kwargs)} were given with a solver object; "
          "set them on the object instead.")
    return solver
  if solver not in SOLVERS:
    raise ValueError(
        f"Unknown solver {solver!r}; expected one of {sorted(SOLVERS)}.")
  cls = SOLVERS[solver]
  fields = {field.name for field in dataclasses.fields(cls)}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(
        f"Unknown option(s) {sorted(unknown)} for solver {solver!r}; it takes "
        f"{sorted(fields)} (plus fixed_point's own keyword arguments).")
  return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class BackwardOptions:
  """How the cotangent of y* is turned into gradients (see module docstring).

  Attributes:
    mode: one of BACKWARD_MODES.
    solver: solver of the `implicit` linear fixed point.
    loop: stopping rule of the `implicit` solve.
    onestep_clip: with `onestep`, scale J^T v down per example so that
      ||J^T v|| <= onestep_clip * ||v||. None: no clipping.
    phantom_steps: K, the number of applications of f in `phantom`.
    phantom_damping: lambda in y <- (1 - lambda) y + lambda f(y) for `phantom`.
    on_failure: what an `implicit` solve that did not converge does: `warn`
      logs from the device, `nan` makes that example's gradient NaN (so a
      training step that skips non-finite updates skips it), `ignore` keeps
      the best iterate silently. The solve's stats always reach a
      `backward_probe` when one is passed.
  """

  mode: str = "implicit"
  solver: FixedPointSolver = Anderson()
  loop: loop.LoopOptions = loop.LoopOptions()
  onestep_clip: Optional[float] = None
  phantom_steps: int = 2
  phantom_damping: float = 1.0
  on_failure: str = "warn"

  def __post_init__(self):
    if self.mode not in BACKWARD_MODES:
      raise ValueError(f"Unknown backward mode {self.mode!r}; expected one of "
                       f"{list(BACKWARD_MODES)}.")
    if self.on_failure not in ON_BACKWARD_FAILURE:
      raise ValueError(f"on_backward_failure must be one of "
                       f"{list(ON_BACKWARD_FAILURE)}; got {self.on_failure!r}.")
    if self.phantom_steps < 1:
      raise ValueError(
          f"phantom_steps must be >= 1; got {self.phantom_steps}.")
    if not 0.0 < self.phantom_damping <= 1.0:
      raise ValueError(
          f"phantom_damping must lie in (0, 1]; got {self.phantom_damping}.")
    if self.onestep_clip is not None and self.onestep_clip <= 0:
      raise ValueError(f"onestep_clip must be > 0; got {self.onestep_clip}.")


def fixed_point(
    f: Callable[[PyTree, PyTree, PyTree], PyTree],
    params: PyTree,
    c: PyTree,
    y0: PyTree,
    *,
    solver: Union[str, FixedPointSolver] = "anderson",
    backward: str = "implicit",
    max_iter: int = 50,
    tol: float = 1e-4,
    atol: float = 0.0,
    min_iter: int = 0,
    divergence_factor: Optional[float] = loop.DEFAULT_DIVERGENCE_FACTOR,
    track_best: bool = True,
    trace: bool = False,
    backward_solver: Union[str, FixedPointSolver] = "anderson",
    backward_max_iter: Optional[int] = None,
    backward_tol: Optional[float] = None,
    onestep_clip: Optional[float] = None,
    phantom_steps: int = 2,
    phantom_damping: float = 1.0,
    on_backward_failure: str = "warn",
    backward_probe: Optional[jax.Array] = None,
    **solver_options,
) -> tuple[PyTree, SolverStats]:
  """Solves y = f(params, y, c) from y0 and differentiates the solution.

  Args:
    f: the map. `y` is a pytree of arrays sharing a leading batch axis; f must
      return the same structure, shapes and dtypes, and treat examples of the
      batch independently (per-example stopping relies on it).
    params: any pytree; gradients flow to it.
    c: the injected context (any pytree); gradients flow to it and so to
      whatever produced it.
    y0: the starting state. It receives no gradient, except with `unrolled`.
    solver: "anderson", "picard", "broyden", or a solver object.
    backward: one of "implicit", "onestep", "jfb", "phantom", "unrolled".
    max_iter: most solver steps; 0 returns y0 unchanged without evaluating f.
    tol: per-example relative tolerance: an example converges when
      ||f(y) - y|| <= atol + tol * max(||y0||, ||f(y0)||), a scale fixed at
      the start (see `LoopOptions`). tol = atol = 0 runs exactly max_iter
      steps.
    atol: absolute tolerance on ||f(y) - y|| (forward solve only).
    min_iter: no example stops on convergence before this many steps.
    divergence_factor: stop and flag (`stats.diverged`) an example whose
      ||y|| or ||f(y) - y|| exceeds this times the start scale; None: never.
      The implicit backward solve uses the same factor.
    track_best: return each example's lowest-residual iterate.
    trace: record the residual of every step in `stats.trace`.
    backward_solver: solver of the `implicit` backward fixed point.
    backward_max_iter: its step limit (default: max_iter).
    backward_tol: its relative tolerance (default: tol), against the scale
      max(||v||, ||J^T v + v||) of its start u0 = v, v the cotangent of y*.
    onestep_clip: `onestep` clipping of J^T v relative to ||v||.
    phantom_steps: K for `phantom`.
    phantom_damping: damping of the `phantom` steps.
    on_backward_failure: "warn", "nan" or "ignore" (see BackwardOptions).
    backward_probe: optional float32 array from `backward_probe()`. Take the
      gradient with respect to it as well, and `backward_stats` reads the
      backward solve's statistics out of that gradient.
    **solver_options: constructor options of a named solver (for example
      `history=5, mixing=0.9` for Anderson).

  Returns:
    (y_star, stats): the solution in y0's structure and dtypes, and the
    forward solve's per-example `SolverStats`.
  """
  options = loop.LoopOptions(max_iter=max_iter, tol=tol, min_iter=min_iter,
                             track_best=track_best, trace=trace, atol=atol,
                             divergence_factor=divergence_factor)
  forward_solver = make_solver(solver, **solver_options)
  backward_options = BackwardOptions(
      mode=backward,
      solver=make_solver(backward_solver),
      loop=loop.LoopOptions(
          max_iter=max_iter if backward_max_iter is None else backward_max_iter,
          tol=tol if backward_tol is None else backward_tol,
          divergence_factor=divergence_factor),
      onestep_clip=onestep_clip, phantom_steps=phantom_steps,
      phantom_damping=phantom_damping, on_failure=on_backward_failure)
  spec = flat_lib.flat_spec(y0)
  y0_flat = spec.flatten(y0)
  f_flat = flat_lib.flat_map(f, spec)

  if max_iter == 0:
    # Solver-free: y* is y0 itself, so gradients reach y0 and nothing else.
    y_flat, stats = loop.solve(None, y0_flat, forward_solver, options)
    return spec.unflatten(y_flat), stats

  if backward == "unrolled":
    y_flat, stats = loop.solve_unrolled(
        lambda y: f_flat(params, y, c), y0_flat, forward_solver, options)
    return spec.unflatten(y_flat), stats

  # Hoist values that f closes over (tracers inside jit or grad) into explicit
  # arguments, so custom_vjp can differentiate with respect to them.
  closed_f, consts = jax.closure_convert(f_flat, params, y0_flat, c)
  if backward_probe is None:
    backward_probe = probe_lib.backward_probe()
  config = _Config(forward_solver, options, backward_options)
  y_flat, stats = _solve(closed_f, config, params, consts, c, y0_flat,
                         backward_probe)
  return spec.unflatten(y_flat), stats


@dataclasses.dataclass(frozen=True)
class _Config:
  solver: FixedPointSolver
  options: loop.LoopOptions
  backward: BackwardOptions


def _call(closed_f, params, consts, c, y):
  return closed_f(params, y, c, *consts)


def _solve_fwd_only(closed_f, config, params, consts, c, y0, probe):
  del probe
  return loop.solve(lambda y: _call(closed_f, params, consts, c, y), y0,
                    config.solver, config.options)


_solve = jax.custom_vjp(_solve_fwd_only, nondiff_argnums=(0, 1))


def _solve_fwd(closed_f, config, params, consts, c, y0, probe):
  y_star, stats = _solve_fwd_only(closed_f, config, params, consts, c, y0,
                                  probe)
  return (y_star, stats), (params, consts, c, y_star, y0, probe)


def _solve_bwd(closed_f, config, residuals, cotangents):
  params, consts, c, y_star, y0, probe = residuals
  v = cotangents[0].astype(y_star.dtype)
  options = config.backward

  if options.mode == "phantom":
    def phantom(params, consts, c):
      y = y_star
      for _ in range(options.phantom_steps):
        fy = _call(closed_f, params, consts, c, y)
        y = (1.0 - options.phantom_damping) * y + options.phantom_damping * fy
      return y

    _, phantom_vjp = jax.vjp(phantom, params, consts, c)
    grad_params, grad_consts, grad_c = phantom_vjp(v)
    probe_grad = probe_lib.probe_cotangent_without_solve(v, probe)
  else:
    u, probe_grad = _cotangent_u(closed_f, options, params, consts, c, y_star,
                                 v, probe)
    _, param_vjp = jax.vjp(
        lambda p, k, cc: _call(closed_f, p, k, cc, y_star), params, consts, c)
    grad_params, grad_consts, grad_c = param_vjp(u)
  return (grad_params, grad_consts, grad_c, jnp.zeros_like(y0), probe_grad)


def _cotangent_u(closed_f, options, params, consts, c, y_star, v, probe):
  """u for the implicit, onestep and jfb modes, and the probe's cotangent."""
  if options.mode == "jfb":
    return v, probe_lib.probe_cotangent_without_solve(v, probe)
  _, y_vjp = jax.vjp(lambda y: _call(closed_f, params, consts, c, y), y_star)

  def transpose_jacobian(u):
    return y_vjp(u)[0]

  if options.mode == "onestep":
    jtv = transpose_jacobian(v)
    if options.onestep_clip is not None:
      limit = options.onestep_clip * jnp.linalg.norm(v, axis=1)
      norm = jnp.linalg.norm(jtv, axis=1)
      scale = jnp.minimum(1.0, limit / jnp.maximum(norm, 1e-30))
      jtv = jtv * scale[:, None]
    return v + jtv, probe_lib.probe_cotangent_without_solve(v, probe)

  u, stats = loop.solve(lambda u: transpose_jacobian(u) + v, v,
                        options.solver, options.loop)
  failed = ~stats.converged
  if options.on_failure == "nan":
    u = jnp.where(failed[:, None], jnp.nan, u)
  elif options.on_failure == "warn":
    jax.debug.callback(_warn_if_failed, jnp.sum(failed),
                       jnp.sum(stats.diverged), jnp.nanmax(
                           jnp.where(failed, stats.residual, 0.0)),
                       options.loop.max_iter)
  return u, probe_lib.probe_cotangent(stats, probe)


def _warn_if_failed(num_failed, num_diverged, worst_residual, max_iter):
  # Under vmap the callback sees batched values: reduce them here.
  num_failed = int(np.sum(num_failed))
  if num_failed > 0:
    logger.warning(
        "fixed_point: the implicit backward solve did not converge for %d "
        "example(s) (%d diverged; worst relative residual %.3g, at most %d "
        "steps); their gradients are approximate. Raise backward_max_iter or "
        "loosen backward_tol, or pass on_backward_failure='nan' to drop them.",
        num_failed, int(np.sum(num_diverged)), float(np.max(worst_residual)),
        int(np.max(max_iter)))


_solve.defvjp(_solve_fwd, _solve_bwd)
