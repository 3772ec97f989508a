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

Guards against misuse:

  * The state needs a batch axis. A state whose leaves all have fewer than two
    axes (a jaxopt-style `[n]` vector) is refused unless `batched` says what it
    is: `batched=False` solves it as one example, `batched=True` as a batch of
    one-number examples.
  * `unrolled` needs `solver="picard"`: differentiating Anderson's or
    Broyden's step differentiates their small weight solve, which blows up.
  * `throw=True` raises `FixedPointNotConverged` when an example did not
    converge.
  * Options that fix the loop (max_iter, tol, ...) must be static; a traced
    value gets an error that says so.
  * The implicit backward solve's non-convergence warning is rate-limited
    (`set_backward_warning_interval`).

Why one module of ~560 lines: the forward solve, its custom VJP and the
backward modes share the argument checks and the closure they build.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
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

# The implicit backward solve's non-convergence warning is logged at most once
# per this many seconds; the warnings skipped in between are counted in the
# next one. Change it with `set_backward_warning_interval`.
BACKWARD_WARNING_INTERVAL_S = 60.0


class FixedPointNotConverged(RuntimeError):
  """Raised by `fixed_point(..., throw=True)` when the forward solve failed.

  Outside of jit it is raised by the call itself. Under `jax.jit` it is raised
  from a host callback when the computation runs, and JAX reports it as a
  runtime error (`jax.errors.JaxRuntimeError`) whose message contains this
  one.
  """


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
    loop.require_static("phantom_steps", self.phantom_steps)
    loop.require_static("phantom_damping", self.phantom_damping)
    loop.require_static("onestep_clip", self.onestep_clip)
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
    batched: Optional[bool] = None,
    throw: bool = False,
    **solver_options,
) -> tuple[PyTree, SolverStats]:
  """Solves y = f(params, y, c) from y0 and differentiates the solution.

  Args:
    f: the map. `y` is a pytree of arrays sharing a leading batch axis; f must
      return the same structure, shapes and dtypes, and treat examples of the
      batch independently (per-example stopping relies on it). With
      `batched=False`, y is the user's unbatched state instead.
    params: any pytree; gradients flow to it.
    c: the injected context (any pytree); gradients flow to it and so to
      whatever produced it.
    y0: the starting state. It receives no gradient, except with `unrolled`.
    solver: "anderson", "picard", "broyden", or a solver object.
    backward: one of "implicit", "onestep", "jfb", "phantom", "unrolled".
      `unrolled` differentiates every solver step and needs
      `solver="picard"`: through Anderson's and Broyden's weights the
      derivative blows up (see `check_unrolled_solver`).
    max_iter: most solver steps; 0 returns y0 unchanged without evaluating f.
      Like every option that shapes the loop (min_iter, tol, atol, ...), it
      must be a static Python number, not a value traced by jax.jit.
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
    batched: whether y0's leading axis is a batch of independent examples.
      None (the default) assumes it is, but refuses a state whose leaves all
      have fewer than two axes (shape `[n]` or scalars), which is ambiguous:
      a jaxopt-style `[n]` state would silently become n one-number examples,
      each stopping on its own. False: the whole state is one example (any
      shapes, scalars included); the stats then hold scalars per field. True:
      the leading axis is the batch even for `[n]` states.
    throw: raise `FixedPointNotConverged` if any example of the forward solve
      did not converge (not with max_iter=0, which solves nothing). Outside
      of jit the call raises; under jit a host callback raises when the
      computation runs, which JAX reports as a `JaxRuntimeError` carrying the
      message (see `FixedPointNotConverged`).
    **solver_options: constructor options of a named solver (for example
      `history=5, mixing=0.9` for Anderson).

  Returns:
    (y_star, stats): the solution in y0's structure and dtypes, and the
    forward solve's per-example `SolverStats`.

  Raises:
    ValueError: an unbatched state without `batched`, `unrolled` with
      Anderson or Broyden, or an invalid option.
    TypeError: an option that must be static (max_iter, tol, ...) is traced.
    FixedPointNotConverged: with `throw=True`, see above.
  """
  for name, value in (("max_iter", max_iter), ("min_iter", min_iter),
                      ("tol", tol), ("atol", atol),
                      ("divergence_factor", divergence_factor),
                      ("backward_max_iter", backward_max_iter),
                      ("backward_tol", backward_tol)):
    loop.require_static(name, value)
  if batched is None:
    _check_batch_axis(y0)
  elif not batched:
    y, stats = fixed_point(
        _batched_map(f), params, c, _add_batch_axis(y0), solver=solver,
        backward=backward, max_iter=max_iter, tol=tol, atol=atol,
        min_iter=min_iter, divergence_factor=divergence_factor,
        track_best=track_best, trace=trace, backward_solver=backward_solver,
        backward_max_iter=backward_max_iter, backward_tol=backward_tol,
        onestep_clip=onestep_clip, phantom_steps=phantom_steps,
        phantom_damping=phantom_damping,
        on_backward_failure=on_backward_failure,
        backward_probe=backward_probe, batched=True, throw=throw,
        **solver_options)
    return _remove_batch_axis(y), _unbatched_stats(stats)
  options = loop.LoopOptions(max_iter=max_iter, tol=tol, min_iter=min_iter,
                             track_best=track_best, trace=trace, atol=atol,
                             divergence_factor=divergence_factor)
  forward_solver = make_solver(solver, **solver_options)
  if backward == "unrolled":
    check_unrolled_solver(forward_solver)
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
    if throw:
      _throw_if_not_converged(stats, options)
    return spec.unflatten(y_flat), stats

  # Hoist values that f closes over (tracers inside jit or grad) into explicit
  # arguments, so custom_vjp can differentiate with respect to them.
  closed_f, consts = jax.closure_convert(f_flat, params, y0_flat, c)
  if backward_probe is None:
    backward_probe = probe_lib.backward_probe()
  config = _Config(forward_solver, options, backward_options)
  y_flat, stats = _solve(closed_f, config, params, consts, c, y0_flat,
                         backward_probe)
  if throw:
    _throw_if_not_converged(stats, options)
  return spec.unflatten(y_flat), stats


def check_unrolled_solver(solver: FixedPointSolver) -> None:
  """Refuses the solvers whose steps `backward="unrolled"` cannot differentiate.

  Anderson's step mixes earlier iterates with weights from a small, often
  nearly singular linear solve, and Broyden's divides by inner products of
  vanishing steps. Differentiating those gives gradients of -4.6e9 (measured
  on a 4-dimensional linear contraction whose true derivative is -132) or NaN;
  holding the weights fixed (which the solvers do, see `Anderson`) keeps the
  gradient bounded but still leaves errors of tens of percent, because the
  weights are tuned to the forward residuals, not the tangent's. Plain
  (optionally damped) iteration has neither problem: its unrolled gradient
  converges to the implicit one at the forward solve's own rate.
  """
  reasons = {
      Anderson: ("its mixing weights come from a small, often nearly singular "
                 "solve (measured: a gradient of -4.6e9 where the truth is "
                 "-132)"),
      Broyden: ("its inverse-Jacobian estimate divides by inner products of "
                "vanishing steps (measured: NaN gradients)"),
  }
  for cls, reason in reasons.items():
    if isinstance(solver, cls):
      raise ValueError(
          f"backward='unrolled' differentiates every solver step, and "
          f"{cls.__name__}'s steps cannot be differentiated reliably: "
          f"{reason}. For an unrolled gradient pass solver='picard' (with "
          "damping=... if plain iteration oscillates); for the exact gradient "
          f"with {cls.__name__}, use backward='implicit'.")


def _check_batch_axis(y0: PyTree) -> None:
  """Refuses a state with no leaf of two or more axes (batched=None)."""
  shapes = [tuple(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(y0)]
  if shapes and all(len(shape) < 2 for shape in shapes):
    raise ValueError(
        f"fixed_point: the state y0 has leaf shape(s) {shapes}, with no batch "
        "axis that can be told apart from the state: fixed_point treats axis "
        "0 as a batch of independent examples, each stopping on its own, so "
        "a single state of shape [n] would be solved as n one-number "
        "examples. Add a batch axis (y0[None], and make f map [1, n] to "
        "[1, n]), or pass batched=False to solve the whole state as one "
        "example; if axis 0 really is a batch of one-number examples, pass "
        "batched=True.")


def _add_batch_axis(tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], tree)


def _remove_batch_axis(tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def _batched_map(f: Callable[..., PyTree]) -> Callable[..., PyTree]:
  """f on an unbatched state, as a map of a batch of one example."""

  def batched_f(params, y, c):
    return _add_batch_axis(f(params, _remove_batch_axis(y), c))

  return batched_f


def _unbatched_stats(stats: SolverStats) -> SolverStats:
  """Stats of a batch of one, with the batch axis removed."""
  return stats._replace(
      iterations=stats.iterations[0], residual=stats.residual[0],
      converged=stats.converged[0], nonfinite=stats.nonfinite[0],
      diverged=None if stats.diverged is None else stats.diverged[0],
      trace=None if stats.trace is None else stats.trace[:, 0])


def _throw_if_not_converged(stats: SolverStats,
                            options: loop.LoopOptions) -> None:
  """Raises FixedPointNotConverged now, or from the device under tracing."""
  if options.max_iter == 0:
    return  # nothing was solved, on purpose
  values = (stats.converged, stats.diverged, stats.nonfinite, stats.residual)
  try:
    concrete = [np.asarray(v) for v in values]
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    concrete = None  # traced (jit, grad, vmap): check when the values exist
  if concrete is None:
    jax.debug.callback(
        lambda *v: _raise_if_not_converged(*v, options=options), *values)
  else:
    _raise_if_not_converged(*concrete, options=options)


def _raise_if_not_converged(converged, diverged, nonfinite, residual, *,
                            options):
  # Under vmap the callback sees batched values: reduce them here.
  converged = np.asarray(converged)
  if np.all(converged):
    return
  failed = ~converged
  residual = np.asarray(residual, np.float64)
  worst = np.nanmax(np.where(failed, residual, -np.inf), initial=-np.inf)
  raise FixedPointNotConverged(
      f"fixed_point did not converge for {int(np.sum(failed))} of "
      f"{converged.size} example(s) ({int(np.sum(diverged))} diverged, "
      f"{int(np.sum(nonfinite))} non-finite; worst relative residual "
      f"{worst:.3g} against tol={options.tol:g}, atol={options.atol:g}, "
      f"after at most max_iter={options.max_iter} steps). Raise max_iter, "
      "loosen tol, or try another solver or damping; or pass throw=False and "
      "read stats.converged.")


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
    # One linearisation of f at y* serves J^T (every use) and the final
    # parameter vjp; where only J^T u is used, XLA drops the weight gradients.
    _, vjp_all = jax.vjp(lambda p, k, cc, y: _call(closed_f, p, k, cc, y),
                         params, consts, c, y_star)
    u, probe_grad = _cotangent_u(lambda w: vjp_all(w)[3], options, v, probe)
    grad_params, grad_consts, grad_c, _ = vjp_all(u)
  return (grad_params, grad_consts, grad_c, jnp.zeros_like(y0), probe_grad)


def _cotangent_u(transpose_jacobian, options, v, probe):
  """u for the implicit, onestep and jfb modes, and the probe's cotangent;
  `transpose_jacobian(w)` is J^T w at y*."""
  if options.mode == "jfb":
    return v, probe_lib.probe_cotangent_without_solve(v, probe)

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


class _RateLimit:
  """Lets a warning through at most once per interval; counts the rest."""

  def __init__(self):
    self._lock = threading.Lock()
    self.reset()

  def reset(self) -> None:
    """Forgets the last warning: the next one is logged (used by tests)."""
    self._last = None
    self._skipped_steps = 0
    self._skipped_examples = 0

  def admit(self, num_examples: int, interval: float, now: float
            ) -> Optional[tuple[int, int]]:
    """None to skip this warning, else (steps, examples) skipped before it."""
    with self._lock:
      if self._last is not None and now - self._last < interval:
        self._skipped_steps += 1
        self._skipped_examples += num_examples
        return None
      skipped = (self._skipped_steps, self._skipped_examples)
      self._last = now
      self._skipped_steps = self._skipped_examples = 0
      return skipped


_BACKWARD_WARNING = _RateLimit()


def set_backward_warning_interval(seconds: float) -> None:
  """Logs the backward non-convergence warning at most once per `seconds`.

  The default is 60 s; 0 logs every failing solve. The limit is shared by
  every `fixed_point` in the process; the next failure after this call is
  logged.
  """
  global BACKWARD_WARNING_INTERVAL_S
  if not seconds >= 0:
    raise ValueError(f"The warning interval must be >= 0; got {seconds}.")
  BACKWARD_WARNING_INTERVAL_S = float(seconds)
  _BACKWARD_WARNING.reset()


def _warn_if_failed(num_failed, num_diverged, worst_residual, max_iter):
  # Under vmap the callback sees batched values: reduce them here.
  num_failed = int(np.sum(num_failed))
  if num_failed == 0:
    return
  skipped = _BACKWARD_WARNING.admit(num_failed, BACKWARD_WARNING_INTERVAL_S,
                                    time.monotonic())
  if skipped is None:
    return
  skipped_steps, skipped_examples = skipped
  since = ""
  if skipped_steps:
    since = (f" Since the last such warning, {skipped_steps} more solve(s) "
             f"failed for {skipped_examples} example(s) in all.")
  logger.warning(
      "fixed_point: the implicit backward solve did not converge for %d "
      "example(s) (%d diverged; worst relative residual %.3g, at most %d "
      "steps); their gradients are approximate. Raise backward_max_iter or "
      "loosen backward_tol, or pass on_backward_failure='nan' to drop them.%s "
      "(Logged at most once every %g s; a backward_probe counts every "
      "failure.)",
      num_failed, int(np.sum(num_diverged)), float(np.max(worst_residual)),
      int(np.max(max_iter)), since, BACKWARD_WARNING_INTERVAL_S)


_solve.defvjp(_solve_fwd, _solve_bwd)
