"""Anderson acceleration (type II) with per-example mixing weights.

Each example keeps the last `history` iterates x_i and residuals g_i and mixes
them with weights alpha that minimise ||sum_i alpha_i g_i|| subject to
sum_i alpha_i = 1:

    [[0, 1^T], [1, G G^T + lambda I]] [nu; alpha] = [1; 0]

The (history + 1)-sized bordered system is solved in the solver's dtype (float32,
or float64 under x64; never lower) for every example
separately. lambda is `ridge` times the mean diagonal of the Gram matrix, so
the regularisation follows the scale of the residuals. Where the system gives
non-finite or runaway weights, that example takes a plain mixing step instead.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


class AndersonMemory(NamedTuple):
  iterates: jax.Array   # [history, batch, dim]
  residuals: jax.Array  # [history, batch, dim]


@dataclasses.dataclass(frozen=True)
class Anderson:
  """Anderson acceleration.

  Attributes:
    history: number of past iterates mixed (m).
    mixing: beta; the step is sum_i alpha_i (x_i + beta * g_i). 1 is undamped.
    ridge: Tikhonov term relative to the mean diagonal of the Gram matrix.
    max_weight: weights larger than this in magnitude mark the small system as
      ill-conditioned; that example falls back to x + beta * g.
  """

  history: int = 5
  mixing: float = 1.0
  ridge: float = 1e-4
  max_weight: float = 1e4

  def __post_init__(self):
    if self.history < 1:
      raise ValueError(f"Anderson history must be >= 1; got {self.history}.")
    if not 0.0 < self.mixing <= 1.0:
      raise ValueError(f"Anderson mixing must lie in (0, 1]; got {self.mixing}.")
    if self.ridge < 0:
      raise ValueError(f"Anderson ridge must be >= 0; got {self.ridge}.")

  def init(self, y: jax.Array, g: jax.Array) -> AndersonMemory:
    shape = (self.history,) + y.shape
    return AndersonMemory(jnp.zeros(shape, y.dtype), jnp.zeros(shape, y.dtype))

  def propose(self, memory, y, g, step):
    m = self.history
    slot = step % m
    iterates = memory.iterates.at[slot].set(y)
    residuals = memory.residuals.at[slot].set(g)
    valid = jnp.arange(m) < jnp.minimum(step + 1, m)          # [m]
    alpha, ok = self._weights(residuals, valid)               # [batch, m]
    mixed = (jnp.einsum("bm,mbd->bd", alpha, iterates, precision="highest")
             + self.mixing * jnp.einsum("bm,mbd->bd", alpha, residuals,
                                        precision="highest"))
    plain = y + self.mixing * g
    y_next = jnp.where(ok[:, None], mixed, plain)
    return y_next, AndersonMemory(iterates, residuals)

  def _weights(self, residuals, valid):
    """Mixing weights [batch, m] and a per-example flag that they are usable."""
    m = self.history
    gram = jnp.einsum("ibd,jbd->bij", residuals, residuals,
                      precision="highest")                     # [batch, m, m]
    dtype = residuals.dtype
    valid_f = valid.astype(dtype)
    eye = jnp.eye(m, dtype=dtype)
    gram = gram * (valid_f[:, None] * valid_f[None, :])
    num_valid = jnp.sum(valid_f)
    scale = jnp.trace(gram, axis1=1, axis2=2) / num_valid     # [batch]
    lam = self.ridge * scale
    # Unused slots get an identity row and a zero border, so their weight is 0.
    gram = gram + lam[:, None, None] * eye * valid_f + eye * (1.0 - valid_f)
    # A zero history (an example at its fixed point, or frozen) would make the
    # system singular; its NaN weights are discarded below, but under
    # reverse-mode autodiff (unrolled solves) they would still poison the
    # gradient through jnp.where. Solve a harmless system for those rows.
    usable = scale > 0
    gram = jnp.where(usable[:, None, None], gram, eye)
    batch = gram.shape[0]
    border = jnp.broadcast_to(valid_f, (batch, m))
    top = jnp.concatenate([jnp.zeros((batch, 1), dtype), border], axis=1)
    bottom = jnp.concatenate([border[:, :, None], gram], axis=2)
    system = jnp.concatenate([top[:, None, :], bottom], axis=1)  # [b, m+1, m+1]
    rhs = jnp.zeros((batch, m + 1), dtype).at[:, 0].set(1.0)
    solution = jnp.linalg.solve(system, rhs[..., None])[..., 0]
    alpha = solution[:, 1:]
    ok = (jnp.all(jnp.isfinite(alpha), axis=1)
          & (jnp.max(jnp.abs(alpha), axis=1) < self.max_weight)
          & usable)
    return jnp.where(ok[:, None], alpha, 0.0), ok
