"""Picard (fixed-point) iteration with optional damping."""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Picard:
  """y_{k+1} = y_k + damping * (f(y_k) - y_k); damping 1 is plain iteration.

  Damping below 1 trades speed for stability on maps that oscillate.
  """

  damping: float = 1.0

  def __post_init__(self):
    if not 0.0 < self.damping <= 1.0:
      raise ValueError(f"Picard damping must lie in (0, 1]; got {self.damping}.")

  def init(self, y: jax.Array, g: jax.Array) -> tuple[()]:
    return ()

  def propose(self, memory, y, g, step):
    return y + self.damping * g, memory
