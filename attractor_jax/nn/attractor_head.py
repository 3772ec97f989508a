"""The attractor head: weight-tied gated blocks iterated to their fixed point.

    f(y; c) = c + R(y + c),   y* = solve y = f(y; c) from y0 = c

R is the summed residual update of the head's pre-norm blocks, whose attention
and MLP outputs are gated per channel (small gates keep df/dy small, so f
contracts); MLP-only blocks, or NNX modules of the user's own, can take their
place (see `AttractorHead`). The proposal c is injected at every step, not
only as the start (`INJECTIONS` lists the paper's Table 4 alternatives). The
head has no dropout, so the solve always sees a deterministic map.

Call the head under `nnx.jit`: an eager call traces the solver loop again
each time (it warns once). Inside `attractor_jax.linen` wrappers the solve is
skipped during Linen `init` (`solve_skipped`).

Why one module of ~560 lines: `SolveConfig`, the head's map and its solve
are read together (the map's options are the config's fields); splitting
them would send a reader back and forth.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import operator
import warnings
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import errors
from attractor_jax import solvers
from attractor_jax.nn import blocks as blocks_lib
from attractor_jax.nn import dense as dense_lib
from attractor_jax.nn import initializers
from attractor_jax.nn.kv_cache import KVCache
from attractor_jax.solvers import loop as loop_lib
from attractor_jax.solvers.anderson import Anderson
from attractor_jax.solvers.base import FixedPointSolver
from attractor_jax.solvers.broyden import Broyden
from attractor_jax.solvers.fixed_point import ON_BACKWARD_FAILURE
from attractor_jax.solvers.picard import Picard

# Each solver's options: SolveConfig field -> the solver's constructor
# argument. Every field is named for one solver only, so no option silently
# becomes another solver's (Anderson's `mixing` is not Picard's `damping`).
SOLVER_OPTIONS = {
    "anderson": {"history": "history", "mixing": "mixing", "ridge": "ridge",
                 "max_weight": "max_weight"},
    "picard": {"damping": "damping"},
    "broyden": {"broyden_history": "history",
                "min_denominator": "min_denominator"},
}


@dataclasses.dataclass(frozen=True)
class SolveConfig:
  """Every `fixed_point` setting of an attractor head, with its defaults.

  A field left at its default does what `fixed_point` does when that keyword
  is not passed; `fixed_point_kwargs()` gives the keyword arguments. The
  language models set their own (the presets, and `models.config.LM_SOLVE`
  as `ModelConfig`'s default).

  Attributes:
    solver: "anderson", "picard", "broyden", or a solver object (for example
      `attractor_jax.Anderson(history=3)`; hashable, as a frozen dataclass
      is). With an object, leave the per-solver fields below at their
      defaults and set the options on the object.
    history, mixing, ridge, max_weight: Anderson's options (its `history`
      m and `mixing` beta, see `solvers.Anderson`).
    damping: Picard's step, y + damping * (f(y) - y).
    broyden_history, min_denominator: Broyden's `history` and
      `min_denominator`.
    max_iter, tol, atol, min_iter, divergence_factor, track_best, trace: the
      forward solve's stopping rule and bookkeeping (see `fixed_point`). tol
      must be > 0 here (to run exactly max_iter steps set min_iter =
      max_iter).
    backward: "implicit", "onestep", "jfb", "phantom" or "unrolled".
    backward_solver, backward_max_iter, backward_tol: the implicit backward
      solve (a name or a solver object; None: max_iter, tol).
    onestep_clip, phantom_steps, phantom_damping, on_backward_failure: as in
      `fixed_point`.
    batched: whether the state's leading axis is a batch of independent
      examples (None: it is, and a state with fewer than two axes is
      refused; see `fixed_point`). A head's c `[batch, ..., dim]` always is.
    throw: raise `FixedPointNotConverged` when the forward solve does not
      converge (see `fixed_point`).
  Options a solver does not take must stay at their defaults: for example
  `mixing` with solver="picard" is refused (Picard's step is `damping`).
  """

  solver: Union[str, FixedPointSolver] = "anderson"
  history: int = Anderson.history
  mixing: float = Anderson.mixing
  max_iter: int = 50
  min_iter: int = 0
  tol: float = 1e-4
  backward: str = "implicit"
  backward_solver: Union[str, FixedPointSolver] = "anderson"
  backward_max_iter: Optional[int] = None
  backward_tol: Optional[float] = None
  onestep_clip: Optional[float] = None
  phantom_steps: int = 2
  phantom_damping: float = 1.0
  on_backward_failure: str = "warn"
  # Fields added after the first release (old saved configs lack them; their
  # defaults are what those configs ran with).
  atol: float = 0.0
  divergence_factor: Optional[float] = loop_lib.DEFAULT_DIVERGENCE_FACTOR
  track_best: bool = True
  trace: bool = False
  ridge: float = Anderson.ridge
  max_weight: float = Anderson.max_weight
  damping: float = Picard.damping
  broyden_history: int = Broyden.history
  min_denominator: float = Broyden.min_denominator
  batched: Optional[bool] = None
  throw: bool = False

  def __post_init__(self):
    """Checks names and ranges here, not at the first jitted step.

    Raises:
      errors.ConfigError: naming the field, the bad value and what it takes.
    """
    for name in ("solver", "backward_solver"):
      value = getattr(self, name)
      if isinstance(value, str):
        if value not in solvers.SOLVERS:
          raise errors.ConfigError(
              f"Unknown solve.{name} {value!r}; expected one of "
              f"{', '.join(solvers.SOLVERS)}.")
      elif not (callable(getattr(value, "init", None))
                and callable(getattr(value, "propose", None))):
        raise errors.ConfigError(
            f"solve.{name} must be a solver name ({', '.join(solvers.SOLVERS)})"
            f" or a solver object with init() and propose(); got {value!r}. "
            "(A solver object saved to JSON cannot be restored: save its name "
            "and options instead.)")
    choices = dict(backward=tuple(solvers.BACKWARD_MODES),
                   on_backward_failure=tuple(ON_BACKWARD_FAILURE),
                   batched=(None, True, False), throw=(True, False),
                   track_best=(True, False), trace=(True, False))
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise errors.ConfigError(
            f"Unknown solve.{name} {getattr(self, name)!r}; expected one of "
            f"{', '.join(map(str, known))}.")
    checks = (
        ("history", self.history >= 1, ">= 1"),
        ("mixing", 0 < self.mixing <= 1, "in (0, 1]"),
        ("ridge", self.ridge >= 0, ">= 0"),
        ("max_weight", self.max_weight > 0, "> 0"),
        ("damping", 0 < self.damping <= 1, "in (0, 1]"),
        ("broyden_history", self.broyden_history >= 1, ">= 1"),
        ("min_denominator", self.min_denominator >= 0, ">= 0"),
        ("max_iter", self.max_iter >= 0, ">= 0"),
        ("min_iter", self.min_iter >= 0, ">= 0"),
        ("tol", self.tol > 0, "> 0"),
        ("atol", self.atol >= 0, ">= 0"),
        ("divergence_factor", self.divergence_factor is None
         or self.divergence_factor > 1, "> 1 (or None)"),
        ("backward_max_iter", self.backward_max_iter is None
         or self.backward_max_iter >= 0, ">= 0 (or None)"),
        ("backward_tol", self.backward_tol is None or self.backward_tol > 0,
         "> 0 (or None)"),
        ("onestep_clip", self.onestep_clip is None or self.onestep_clip > 0,
         "> 0 (or None)"),
        ("phantom_steps", self.phantom_steps >= 1, ">= 1"),
        ("phantom_damping", 0 < self.phantom_damping <= 1, "in (0, 1]"),
    )
    for name, ok, rule in checks:
      if not ok:
        raise errors.ConfigError(
            f"solve.{name} must be {rule}; got {getattr(self, name)!r}.")
    self._check_solver_options()

  def _check_solver_options(self):
    """Options of a solver other than the chosen one stay at their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    own = (SOLVER_OPTIONS[self.solver] if isinstance(self.solver, str)
           else {})
    for owner, options in SOLVER_OPTIONS.items():
      for name in options:
        value = getattr(self, name)
        if name in own or value == defaults[name]:
          continue
        if not isinstance(self.solver, str):
          raise errors.ConfigError(
              f"solve.{name}={value!r} is set together with a solver object "
              f"({self.solver!r}); set the option on the object instead.")
        hint = (" (Picard's step size is solve.damping)"
                if name == "mixing" and self.solver == "picard" else "")
        raise errors.ConfigError(
            f"solve.{name}={value!r} is an option of the {owner} solver, but "
            f"solve.solver is {self.solver!r}{hint}; leave it at "
            f"{defaults[name]!r} or set the {self.solver} solver's own: "
            f"{', '.join(SOLVER_OPTIONS[self.solver]) or 'none'}.")

  def solver_options(self) -> dict:
    """The chosen named solver's constructor options (empty for an object)."""
    if not isinstance(self.solver, str):
      return {}
    return {arg: getattr(self, name)
            for name, arg in SOLVER_OPTIONS[self.solver].items()}

  def fixed_point_kwargs(self, max_iter: Optional[int] = None) -> dict:
    """Keyword arguments of `fixed_point`, with an optional max_iter override.

    Every `fixed_point` keyword but `backward_probe` (a per-call argument) is
    given explicitly, so the solve does what this config says whatever
    `fixed_point`'s defaults are.
    """
    max_iter = self.max_iter if max_iter is None else _static_int(max_iter)
    kwargs = {name: getattr(self, name) for name in _FIXED_POINT_FIELDS}
    kwargs.update(max_iter=max_iter, min_iter=min(self.min_iter, max_iter),
                  **self.solver_options())
    return kwargs


def _static_int(max_iter: Any) -> int:
  """max_iter as a Python int; a traced value gets an error that says why."""
  try:
    return operator.index(max_iter)
  except Exception as err:  # pylint: disable=broad-exception-caught
    raise TypeError(
        f"max_iter must be a Python int, known when the step is traced (it "
        f"sets the solver loop's length); got {type(max_iter).__name__}. "
        "Under jit pass it as a static argument, e.g. "
        "nnx.jit(step, static_argnames='max_iter').") from err


def fixed_point_keywords() -> dict[str, inspect.Parameter]:
  """`fixed_point`'s own keyword arguments (not f, params, c, y0, options)."""
  skip = {"f", "params", "c", "y0", "backward_probe"}
  return {name: p for name, p in
          inspect.signature(solvers.fixed_point).parameters.items()
          if name not in skip and p.kind is not p.VAR_KEYWORD}


_FIXED_POINT_FIELDS = tuple(
    name for name in fixed_point_keywords()
    if name in {f.name for f in dataclasses.fields(SolveConfig)})


# How the proposal c enters the map (the paper's Table 4 ablation):
INJECTIONS = {
    # f(y; c) = c + R(y + c): c at every step, into R and around it.
    "additive": "c + R(y + c)",
    # f(y; c) = y + R(y): c is only the start y0. The Jacobian is I + R', so
    # plain iteration contracts only where R' does the work.
    "init_only": "y + R(y)",
    # f(y; c) = c + R(P [y; c]): R reads a learned projection P (2 dim ->
    # dim, variance-preserving init) of the concatenated state and proposal.
    "concat": "c + R(P [y; c])",
}


# ------------------------------------------------- Linen init and eager calls

_SKIP_SOLVE = contextvars.ContextVar("attractor_jax_skip_solve", default=False)


@contextlib.contextmanager
def solve_skipped() -> Iterator[None]:
  """Within this context every head solve returns its start (max_iter = 0).

  `attractor_jax.linen` enters it during Linen `init`, which needs only the
  shapes of the outputs, never the fixed point.
  """
  token = _SKIP_SOLVE.set(True)
  try:
    yield
  finally:
    _SKIP_SOLVE.reset(token)


def effective_max_iter(max_iter: Optional[int]) -> Optional[int]:
  """`max_iter`, or 0 inside `solve_skipped()` (Linen init)."""
  return 0 if _SKIP_SOLVE.get() else max_iter


class EagerSolveWarning(UserWarning):
  """A head solve ran outside of jit: every such call traces the solver."""


_eager_warned = False


def _warn_if_eager(*trees: Any) -> None:
  """Warns once per process when a solve runs on concrete (un-traced) input.

  `trees`: the solve's inputs (c and the head's state). Under jit some of them
  are tracers, even when c itself is a constant closed over by the step.
  """
  global _eager_warned
  if _eager_warned or any(isinstance(leaf, jax.core.Tracer)
                          for leaf in jax.tree.leaves(trees)):
    return
  _eager_warned = True
  warnings.warn(EagerSolveWarning(
      "An attractor head was called outside of jit: every such call traces "
      "and compiles the solver loop again (seconds per call instead of "
      "milliseconds). Wrap the call or the training step in nnx.jit (NNX) "
      "or jax.jit (Linen apply). This warning is shown once."), stacklevel=3)


class AttractorHead(nnx.Module):
  """A residual branch R iterated to the fixed point y* = c + R(y* + c).

  Build one with `AttractorHead.create(...)` (gated pre-norm blocks with the
  head's own defaults), from a `BlockSpec` (`AttractorHead(spec, num_blocks,
  solve_config, rngs=...)`, as the Attractor LM does), or around modules of
  your own (`AttractorHead(residual=[module, ...], solve_config=...)`).

  Each residual module maps x `[batch, ..., dim]` to an update of the same
  shape; the updates of the modules are applied in turn and summed. Keyword
  arguments of the head's call that are not None (`positions`,
  `segment_ids`, or your own, such as an adjacency matrix) are passed to
  every module. Only your modules decide whether f contracts: keep their
  output small at initialisation (the built-in blocks gate it per channel).

  Attributes:
    blocks: the weight-tied residual modules of R (applied once per solver
      step).
    solve_config: solver, stopping rule and backward mode.
    injection: how c enters the map, a key of `INJECTIONS` ("additive", the
      paper's choice, by default; the others are its Table 4 ablations).
    injection_proj: P `[2 dim, dim]` of the "concat" injection (else None).
  """

  def __init__(self, spec: Optional[blocks_lib.BlockSpec] = None,
               num_blocks: int = 1, solve_config: SolveConfig = SolveConfig(),
               *, residual: Union[nnx.Module, Sequence[nnx.Module], None] = None,
               injection: str = "additive",
               rngs: Optional[nnx.Rngs] = None):
    if (spec is None) == (residual is None):
      raise ValueError("Give the attractor head either a BlockSpec (spec, "
                       "num_blocks) or residual=[modules], not both.")
    if not isinstance(solve_config, SolveConfig):
      raise TypeError(f"solve_config must be a SolveConfig; got "
                      f"{type(solve_config).__name__}.")
    if injection not in INJECTIONS:
      raise ValueError(f"Unknown injection {injection!r}; expected one of "
                       f"{', '.join(INJECTIONS)}.")
    self.injection = injection
    self.injection_proj = nnx.data(None)
    if residual is not None:
      if injection == "concat":
        raise ValueError("The concat injection needs the head's BlockSpec "
                         "(its width); with residual modules use additive or "
                         "init_only.")
      modules = ([residual] if isinstance(residual, nnx.Module)
                 else list(residual))
      if not modules or not all(isinstance(m, nnx.Module) for m in modules):
        raise TypeError("residual must be an NNX module or a non-empty "
                        "sequence of them.")
      self.blocks = nnx.List(modules)
      self.solve_config = solve_config
      return
    if spec.gate_max is None:
      raise ValueError("The attractor head needs gated blocks: set gate_max "
                       "(and gate_init, the layer scale) in its BlockSpec, "
                       "or use AttractorHead.create(...).")
    if spec.norm != "pre":
      raise ValueError("The attractor head's blocks must be pre-norm.")
    if spec.out_init_scale == 0:
      raise ValueError(
          "The attractor head's output projections would start at zero "
          "(BlockSpec.out_init_scale=0, its default for backbone blocks): "
          "the head would be the constant map f(y; c) = c, solved in 0 "
          "iterations, with no gradient for its gates. Set out_init_scale "
          "(the Attractor LM uses 1.0), or use AttractorHead.create(...).")
    if num_blocks < 1:
      raise ValueError(f"num_blocks must be >= 1; got {num_blocks}.")
    if rngs is None:
      raise ValueError("rngs is required to build the head's blocks.")
    self.blocks = nnx.List(
        [blocks_lib.Block(spec, rngs=rngs) for _ in range(num_blocks)])
    self.solve_config = solve_config
    if injection == "concat":
      self.injection_proj = initializers.make_param(
          rngs, initializers.truncated_normal((2 * spec.dim) ** -0.5),
          (2 * spec.dim, spec.dim), (None, "embed"), spec.param_dtype)

  @classmethod
  def create(cls, *, dim: int, mlp_dim: int, causal: bool,
             num_heads: Optional[int] = None, num_blocks: int = 1,
             attention: bool = True, rope_theta: Optional[float] = 10000.0,
             qk_norm: bool = True, mlp: str = "relu2", gate_max: float = 1.0,
             gate_init: float = 0.1, out_init_scale: float = 1.0,
             init_std: Optional[float] = None, norm_eps: float = 1e-5,
             solve_config: SolveConfig = SolveConfig(),
             injection: str = "additive",
             dtype=jnp.float32, param_dtype=jnp.float32,
             rngs: nnx.Rngs) -> "AttractorHead":
    """An attractor head of gated pre-norm blocks, with safe defaults.

    Args:
      dim: width of the state (the last axis of c).
      mlp_dim: hidden width of each block's MLP.
      causal: required: True for decoders (a token sees only earlier ones,
        by sequence index), False for sets, graphs and puzzles.
      num_heads: attention heads (required with attention).
      num_blocks: blocks of the residual branch R.
      attention: False builds MLP-only blocks: no token mixing, and c may
        be any `[batch, ..., dim]`.
      rope_theta: rotary embeddings' base; None switches rotary off (then
        `positions` are unused and attention is permutation-equivariant).
      qk_norm: RMS-normalise queries and keys (as the Attractor LM does).
      mlp: "relu2" or "swiglu".
      gate_max, gate_init: per-channel output gates g = gate_max *
        sigmoid(raw), starting at gate_init (the Attractor LM's values).
      out_init_scale: output projections start at std init_std * this; not
        zero (a zero start is the constant map f = c, which never trains its
        gates), 1.0 as in the Attractor LM.
      init_std: std of the projections; None: 1 / sqrt(dim), so that the
        map is as strong at any width (the Attractor LM's 0.02 at width
        1024 is close to it; at width 16 it would leave f nearly constant).
      norm_eps: RMSNorm epsilon.
      solve_config: solver settings (default: `fixed_point`'s defaults).
      injection: how c enters the map (`INJECTIONS`).
      dtype, param_dtype: activation and parameter dtypes.
      rngs: parameter initialisation.
    """
    if not isinstance(causal, bool):
      raise TypeError(f"causal must be True or False; got {causal!r}.")
    if attention and num_heads is None:
      raise ValueError("num_heads is required with attention=True.")
    if not out_init_scale > 0:
      raise ValueError(f"out_init_scale must be > 0; got {out_init_scale}.")
    if init_std is None:
      init_std = dim ** -0.5
    spec = blocks_lib.BlockSpec(
        dim=dim, num_heads=num_heads or 1, mlp_dim=mlp_dim, mlp=mlp,
        norm="pre", qk_norm=qk_norm, rope_theta=rope_theta, causal=causal,
        norm_eps=norm_eps, gate_max=gate_max, gate_init=gate_init,
        init_std=init_std, out_init_scale=out_init_scale, dtype=dtype,
        param_dtype=param_dtype, attention=attention)
    return cls(spec, num_blocks, solve_config, injection=injection, rngs=rngs)

  def residual(self, x: jax.Array, **context) -> jax.Array:
    """R(x): the summed residual updates of the blocks applied in turn.

    `context` (positions, segment_ids, ...): the keyword arguments each
    residual module takes; None values are left out.
    """
    context = {k: v for k, v in context.items() if v is not None}
    total = jnp.zeros_like(x)
    for block in self.blocks:
      if isinstance(block, blocks_lib.Block):
        delta = block.branch(x + total, **context)
      else:
        delta = block(x + total, **context)
      total = total + delta
    return total

  def branch_input(self, y: jax.Array, c: jax.Array) -> jax.Array:
    """What R reads: y + c, y (init_only) or P [y; c] (concat)."""
    if self.injection == "additive":
      return y + c
    if self.injection == "init_only":
      return y
    proj = self.injection_proj[...]
    both = jnp.concatenate([y, c], axis=-1).astype(proj.dtype)
    return dense_lib.dense(both, proj).astype(y.dtype)

  def map_output(self, y: jax.Array, c: jax.Array,
                 update: jax.Array) -> jax.Array:
    """f from R's update: c + update, or y + update (init_only)."""
    return (y if self.injection == "init_only" else c) + update

  def map(self, y: jax.Array, c: jax.Array, **context) -> jax.Array:
    """f(y; c) = c + R(y + c) (or the head's other `injection`)."""
    return self.map_output(
        y, c, self.residual(self.branch_input(y, c), **context))

  def iterate(self, c: jax.Array, count: Any, *,
              y0: Optional[jax.Array] = None, **context) -> jax.Array:
    """`count` applications of the map from y0 (default c): the head run as
    a looped (weight-tied, fixed-count) network.

    `count` may be traced (a `fori_loop`), so no gradient flows through
    this; use `progressive` to train.
    """
    y = c if y0 is None else y0
    return jax.lax.fori_loop(0, count,
                             lambda _, y: self.map(y, c, **context), y)

  def progressive(self, c: jax.Array, *, key: jax.Array, max_warm: int,
                  steps: int, y0: Optional[jax.Array] = None,
                  **context) -> jax.Array:
    """Progressive (truncated, randomly warm-started) training's forward.

    n ~ U{0, ..., max_warm - 1} applications of the map from y0 (default
    c) under stop_gradient, then `steps` applications with gradients; a
    loss on the result trains the map to make progress from any point of
    its own trajectory, which is what keeps it improving when run longer
    than in training (Bansal et al. 2022, "incremental progress
    training"). Training needs no solver: for tasks where the implicit
    gradient through an unconverged solve fails to train. Solve with
    `__call__` at test time.

    Args:
      c: the proposal `[batch, ..., dim]`.
      key: draws n (one n for the whole batch).
      max_warm: n is drawn below it (>= 1; 1: no warm start).
      steps: applications with gradients (>= 1), unrolled.
      y0: the start (default c).
      **context: keyword arguments of the residual modules.

    Returns:
      y after n + steps applications (float32 or wider, as the solve's).
    """
    if max_warm < 1 or steps < 1:
      raise ValueError(f"max_warm and steps must be >= 1; got {max_warm} "
                       f"and {steps}.")
    state_dtype = jnp.result_type(jnp.float32, c.dtype)
    c = c.astype(state_dtype)
    y = c if y0 is None else y0.astype(state_dtype)
    n = jax.random.randint(key, (), 0, max_warm)
    # Detach the inputs, not only the result: a loop with a traced trip count
    # cannot be differentiated in reverse, so no tangent may enter it.
    graphdef, state = nnx.split(self)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    y = frozen.iterate(jax.lax.stop_gradient(c), n,
                       y0=jax.lax.stop_gradient(y), **context)
    for _ in range(steps):
      y = self.map(y, c, **context)
    return y

  def map_cached(self, y: jax.Array, c: jax.Array, positions: jax.Array,
                 caches: Sequence[KVCache]):
    """f(y; c) for new positions attending over cached head keys/values.

    Returns f's value and, per block, the new positions' (keys, values).
    """
    for block in self.blocks:
      if not (isinstance(block, blocks_lib.Block) and block.attn is not None
              and block.spec.causal):
        raise ValueError("Cached solving needs causal attention blocks.")
    x = self.branch_input(y, c)
    total = jnp.zeros_like(x)
    new_kv = []
    for block, cache in zip(self.blocks, caches, strict=True):
      delta, kv = block.branch_cached(x + total, positions, cache)
      total = total + delta
      new_kv.append(kv)
    return self.map_output(y, c, total), new_kv

  def solve_cached(self, c: jax.Array, positions: jax.Array,
                   caches: Sequence[KVCache], *, max_iter: Optional[int] = None
                   ) -> tuple[jax.Array, solvers.SolverStats, list[KVCache]]:
    """Solves only the new positions against the cached fixed point.

    The head is causal, so the fixed point at earlier positions does not
    depend on later tokens: their keys and values at the fixed point are
    cached once, and each new position is solved alone against them. The
    new positions' keys and values at their fixed point are appended.
    """
    graphdef, state = nnx.split(self)

    def f(state, y, c):
      head = nnx.merge(graphdef, state)
      return head.map_cached(y, c, positions, caches)[0]

    max_iter = effective_max_iter(max_iter)
    y, stats = solvers.fixed_point(
        f, state, c, c, **self.solve_config.fixed_point_kwargs(max_iter))
    _, new_kv = self.map_cached(y, c, positions, caches)
    caches = [cache.append(k, v, positions)
              for cache, (k, v) in zip(caches, new_kv)]
    return y, stats, caches

  def __call__(self, c: jax.Array, *, positions=None, segment_ids=None,
               max_iter: Optional[int] = None, y0: Optional[jax.Array] = None,
               backward_probe: Optional[jax.Array] = None, **context
               ) -> tuple[jax.Array, solvers.SolverStats]:
    """Solves for y* given the proposal c.

    Call it under `nnx.jit` (or inside a jitted step): an eager call traces
    the solver loop again every time, and warns once.

    Args:
      c: the proposal `[batch, seq, dim]` (`[batch, ..., dim]` without
        attention); also the default start y0.
      positions: int `[batch, seq]`, read only by rotary embeddings.
      segment_ids: int `[batch, seq]`: tokens attend within their segment.
      max_iter: overrides the configured step limit; 0 returns c itself
        (also forced during Linen init, see `attractor_jax.linen`).
      y0: a warm start (default c).
      backward_probe: see `attractor_jax.backward_probe`.
      **context: further keyword arguments for your residual modules.

    Returns:
      y* (dtype of c) and the per-example solver stats.
    """
    graphdef, state = nnx.split(self)
    context = dict(positions=positions, segment_ids=segment_ids, **context)
    kwargs = self.solve_config.fixed_point_kwargs(effective_max_iter(max_iter))
    if not (isinstance(kwargs["max_iter"], int) and kwargs["max_iter"] == 0):
      _warn_if_eager(c, state)

    def f(state, y, c):
      head = nnx.merge(graphdef, state)
      return head.map(y, c, **context)

    # The fixed point lives in float32 (or wider) even for a bfloat16 model:
    # y + c and c + R(...) are float32 sums, only the branches R compute in
    # the blocks' dtype. Iterates rounded to bfloat16 would leave a residual
    # floor of about 1.6e-3 (docs/scaling.md), above the presets' tolerances.
    state_dtype = jnp.result_type(jnp.float32, c.dtype)
    y0 = c if y0 is None else y0
    y, stats = solvers.fixed_point(
        f, state, c.astype(state_dtype), y0.astype(state_dtype),
        backward_probe=backward_probe, **kwargs)
    return y.astype(c.dtype), stats
