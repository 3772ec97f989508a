"""The attractor head: weight-tied gated blocks iterated to their fixed point.

    f(y; c) = c + R(y + c),   y* = solve y = f(y; c) from y0 = c

R is the summed residual update of the head's pre-norm blocks, whose attention
and MLP outputs are gated per channel (small gates keep df/dy small, so f
contracts). The proposal c is injected at every step, not only as the start.
The head has no dropout, so the solve always sees a deterministic map.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import errors
from attractor_jax import solvers
from attractor_jax.nn import blocks as blocks_lib
from attractor_jax.nn.kv_cache import KVCache
from attractor_jax.solvers.fixed_point import ON_BACKWARD_FAILURE


@dataclasses.dataclass(frozen=True)
class SolveConfig:
  """Solver and backward settings of an attractor head (see `fixed_point`)."""

  solver: str = "anderson"
  history: int = 5
  mixing: float = 1.0
  max_iter: int = 32
  min_iter: int = 0
  tol: float = 1e-3
  backward: str = "onestep"
  backward_solver: str = "anderson"
  backward_max_iter: Optional[int] = None
  backward_tol: Optional[float] = None
  onestep_clip: Optional[float] = None
  phantom_steps: int = 2
  phantom_damping: float = 1.0
  on_backward_failure: str = "warn"

  def __post_init__(self):
    """Checks names and ranges here, not at the first jitted step.

    Raises:
      errors.ConfigError: naming the field, the bad value and what it takes.
    """
    choices = dict(solver=tuple(solvers.SOLVERS),
                   backward=tuple(solvers.BACKWARD_MODES),
                   backward_solver=tuple(solvers.SOLVERS),
                   on_backward_failure=tuple(ON_BACKWARD_FAILURE))
    for name, known in choices.items():
      if getattr(self, name) not in known:
        raise errors.ConfigError(
            f"Unknown solve.{name} {getattr(self, name)!r}; expected one of "
            f"{', '.join(known)}.")
    checks = (
        ("history", self.history >= 1, ">= 1"),
        ("mixing", 0 < self.mixing <= 1, "in (0, 1]"),
        ("max_iter", self.max_iter >= 0, ">= 0"),
        ("min_iter", self.min_iter >= 0, ">= 0"),
        ("tol", self.tol > 0, "> 0"),
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

  def fixed_point_kwargs(self, max_iter: Optional[int] = None) -> dict:
    """Keyword arguments of `fixed_point`, with an optional max_iter override."""
    max_iter = self.max_iter if max_iter is None else max_iter
    solver_options = {}
    if self.solver == "anderson":
      solver_options = dict(history=self.history, mixing=self.mixing)
    elif self.solver == "picard":
      solver_options = dict(damping=self.mixing)
    return dict(
        solver=self.solver, backward=self.backward, max_iter=max_iter,
        min_iter=min(self.min_iter, max_iter), tol=self.tol,
        backward_solver=self.backward_solver,
        backward_max_iter=self.backward_max_iter,
        backward_tol=self.backward_tol, onestep_clip=self.onestep_clip,
        phantom_steps=self.phantom_steps,
        phantom_damping=self.phantom_damping,
        on_backward_failure=self.on_backward_failure, **solver_options)


class AttractorHead(nnx.Module):
  """`num_blocks` gated pre-norm blocks, solved to a fixed point.

  Attributes:
    blocks: the weight-tied blocks of R (applied once per solver step).
    solve_config: solver, stopping rule and backward mode.
  """

  def __init__(self, spec: blocks_lib.BlockSpec, num_blocks: int,
               solve_config: SolveConfig = SolveConfig(), *, rngs: nnx.Rngs):
    if spec.gate_max is None:
      raise ValueError("The attractor head needs gated blocks: set gate_max "
                       "(and gate_init, the layer scale) in its BlockSpec.")
    if spec.norm != "pre":
      raise ValueError("The attractor head's blocks must be pre-norm.")
    if num_blocks < 1:
      raise ValueError(f"num_blocks must be >= 1; got {num_blocks}.")
    self.blocks = nnx.List(
        [blocks_lib.Block(spec, rngs=rngs) for _ in range(num_blocks)])
    self.solve_config = solve_config

  def residual(self, x: jax.Array, *, positions=None, segment_ids=None
               ) -> jax.Array:
    """R(x): the summed residual updates of the blocks applied in turn."""
    return blocks_lib.summed_branches(self.blocks, x, positions=positions,
                                      segment_ids=segment_ids)

  def map(self, y: jax.Array, c: jax.Array, *, positions=None,
          segment_ids=None) -> jax.Array:
    """f(y; c) = c + R(y + c)."""
    return c + self.residual(y + c, positions=positions,
                             segment_ids=segment_ids)

  def map_cached(self, y: jax.Array, c: jax.Array, positions: jax.Array,
                 caches: Sequence[KVCache]):
    """f(y; c) for new positions attending over cached head keys/values.

    Returns f's value and, per block, the new positions' (keys, values).
    """
    x = y + c
    total = jnp.zeros_like(x)
    new_kv = []
    for block, cache in zip(self.blocks, caches, strict=True):
      delta, kv = block.branch_cached(x + total, positions, cache)
      total = total + delta
      new_kv.append(kv)
    return c + total, new_kv

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

    y, stats = solvers.fixed_point(
        f, state, c, c, **self.solve_config.fixed_point_kwargs(max_iter))
    _, new_kv = self.map_cached(y, c, positions, caches)
    caches = [cache.append(k, v, positions)
              for cache, (k, v) in zip(caches, new_kv)]
    return y, stats, caches

  def __call__(self, c: jax.Array, *, positions=None, segment_ids=None,
               max_iter: Optional[int] = None, y0: Optional[jax.Array] = None,
               backward_probe: Optional[jax.Array] = None
               ) -> tuple[jax.Array, solvers.SolverStats]:
    """Solves for y* given the proposal c `[batch, seq, dim]`.

    Args:
      c: the backbone's proposal; also the default start y0.
      positions, segment_ids: as for attention, int `[batch, seq]`.
      max_iter: overrides the configured step limit; 0 returns c itself.
      y0: a warm start (default c).
      backward_probe: see `attractor_jax.backward_probe`.

    Returns:
      y* (dtype of c) and the per-sequence solver stats.
    """
    graphdef, state = nnx.split(self)

    def f(state, y, c):
      head = nnx.merge(graphdef, state)
      return head.map(y, c, positions=positions, segment_ids=segment_ids)

    return solvers.fixed_point(
        f, state, c, c if y0 is None else y0, backward_probe=backward_probe,
        **self.solve_config.fixed_point_kwargs(max_iter))
