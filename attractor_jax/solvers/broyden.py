"""Limited-memory Broyden ("good" Broyden on the inverse Jacobian).

Newton's method on g(y) = f(y) - y needs (dg/dy)^{-1}. Broyden keeps a low-rank
estimate H = -I + sum_i u_i v_i^T of that inverse, per example, and updates it
after each step so that it maps the last change in g to the last change in y.
H starts at -I, so the first step is a plain Picard step. Each term is built on
the ones before it, so dropping the oldest would leave the rest inconsistent:
when the memory is full it is cleared and H restarts from -I.

H is built from stop_gradient(iterates and residuals): reverse-mode autodiff
through a solve (`backward="unrolled"`) differentiates each step
y - H g(y) with H held fixed, a quasi-Newton iteration on the tangent
equation. Differentiating H itself goes through norms of vanishing steps and
divisions by tiny denominators, which turns the gradient NaN.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


class BroydenMemory(NamedTuple):
  us: jax.Array      # [history, batch, dim]
  vs: jax.Array      # [history, batch, dim]
  prev_y: jax.Array  # [batch, dim]
  prev_g: jax.Array  # [batch, dim]


def _rowdot(a, b):
  return jnp.sum(a * b, axis=-1)


@dataclasses.dataclass(frozen=True)
class Broyden:
  """Limited-memory Broyden.

  Attributes:
    history: number of rank-one terms kept.
    min_denominator: updates whose denominator s^T H t is smaller than this
      (relative to ||s|| ||H t||) are skipped for that example.
  """

  history: int = 8
  min_denominator: float = 1e-8

  def __post_init__(self):
    if self.history < 1:
      raise ValueError(f"Broyden history must be >= 1; got {self.history}.")

  def init(self, y, g):
    zeros = jnp.zeros((self.history,) + y.shape, y.dtype)
    return BroydenMemory(zeros, zeros, y, g)

  @staticmethod
  def _apply(us, vs, x):
    """H x = -x + sum_i u_i (v_i . x), per example."""
    coeffs = jnp.einsum("mbd,bd->mb", vs, x, precision="highest")
    return -x + jnp.einsum("mb,mbd->bd", coeffs, us, precision="highest")

  @staticmethod
  def _apply_transposed(us, vs, x):
    """x^T H as a column: -x + sum_i v_i (u_i . x), per example."""
    coeffs = jnp.einsum("mbd,bd->mb", us, x, precision="highest")
    return -x + jnp.einsum("mb,mbd->bd", coeffs, vs, precision="highest")

  def propose(self, memory, y, g, step):
    memory = jax.lax.stop_gradient(memory)
    us, vs = memory.us, memory.vs
    s = jax.lax.stop_gradient(y) - memory.prev_y
    t = jax.lax.stop_gradient(g) - memory.prev_g
    h_t = self._apply(us, vs, t)
    denominator = _rowdot(s, h_t)
    scale = jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(h_t, axis=-1)
    usable = ((step > 0) & (jnp.abs(denominator) > self.min_denominator * scale)
              & jnp.isfinite(denominator) & (scale > 0))
    safe_denominator = jnp.where(usable, denominator, 1.0)
    u = jnp.where(usable[:, None], (s - h_t) / safe_denominator[:, None], 0.0)
    v = jnp.where(usable[:, None], self._apply_transposed(us, vs, s), 0.0)
    slot = jnp.maximum(step - 1, 0) % self.history
    restart = (slot == 0) & (step > 1)
    us = jnp.where(restart, 0.0, us).at[slot].set(u)
    vs = jnp.where(restart, 0.0, vs).at[slot].set(v)
    y_next = y - self._apply(us, vs, g)
    finite = jnp.all(jnp.isfinite(y_next), axis=-1)
    y_next = jnp.where(finite[:, None], y_next, y + g)
    return y_next, BroydenMemory(us, vs, y, g)
