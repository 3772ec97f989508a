"""The interface every fixed-point solver implements.

A solver only proposes the next iterate; the loop in `loop.py` evaluates the
map, measures residuals, freezes converged examples and keeps the best iterate.
All arrays are `[batch, dim]` in the solver dtype (float32, or float64 when
the state is float64); every operation is per example (row), so
one example's failure never touches another's state.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

Memory = Any


class FixedPointSolver(Protocol):
  """Proposes y_{k+1} from y_k and its residual g_k = f(y_k) - y_k."""

  def init(self, y: jax.Array, g: jax.Array) -> Memory:
    """Memory (a pytree of arrays) before the first step."""

  def propose(self, memory: Memory, y: jax.Array, g: jax.Array,
              step: jax.Array) -> tuple[jax.Array, Memory]:
    """The next iterate for every example, and the updated memory.

    Args:
      memory: what `init` or the previous `propose` returned.
      y: the current iterate, `[batch, dim]`.
      g: f(y) - y at the current iterate.
      step: int32 scalar, how many steps the loop has taken so far.
    """
