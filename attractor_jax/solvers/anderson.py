"""Anderson acceleration (type II) with per-example mixing weights.

Each example keeps the last `history` residuals g_i and mixing targets
y_i + beta g_i, and mixes the targets with weights alpha that minimise
||sum_i alpha_i g_i|| subject to sum_i alpha_i = 1:

    alpha = x / sum(x),   (G G^T + lambda I) x = 1,

the solution of the bordered system [[0, 1^T], [1, G G^T + lambda I]]
[nu; alpha] = [1; 0]. lambda is `ridge` times the mean diagonal of the Gram
matrix G G^T, so the regularisation follows the scale of the residuals. Where
the system gives non-finite or runaway weights, that example takes a plain
mixing step instead.

Cost. On a small state the map is cheap and the solver's own work decides the
cost of a step, which is mostly the number of separate kernels it launches.
The small m x m system (symmetric positive definite for ridge > 0) is solved
by unrolled Gauss-Jordan elimination without pivoting, a few elementwise
kernels, instead of a batched LU with pivoting (`jnp.linalg.solve`): that cost
an LU call, two triangular solves and a while loop turning pivots into a
permutation, every step, 15 of Anderson's 21 us per step on a 16 x 64 tanh
layer (CPU) where a whole Picard step takes 3 us. The Gram matrix is kept in
memory and only the new residual's row and column are computed each step (one
batched matrix-vector product), with the history laid out batch-first so that
neither contraction needs a transpose. Everything is in the solver's dtype
(float32, or float64 under x64; never lower); the two contractions ask for
full float32 precision (no cost on CPU, which multiplies float32 in float32
anyway; on GPUs it rules out TF32). See docs/design.md, section 5.

The weights are computed from stop_gradient(residuals), so autodiff through
the solve loop (`loop.solve_unrolled`) differentiates each step with its
weights held fixed. Differentiating the weights themselves amplifies rounding
in nearly parallel residuals without bound (-4.6e9 where the true derivative
is -132). Fixed weights keep the gradient bounded but not accurate (errors of
tens of percent on the same problem: the weights are tuned to the forward
residuals, not the tangent's), so `fixed_point` refuses `backward="unrolled"`
with Anderson.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


class AndersonMemory(NamedTuple):
  targets: jax.Array    # [batch, history, dim]: y_i + mixing * g_i
  residuals: jax.Array  # [batch, history, dim]: g_i
  gram: jax.Array       # [batch, history, history]: g_i . g_j


def solve_small_spd(a: jax.Array, b: jax.Array) -> jax.Array:
  """x = a^{-1} b for a batch of small symmetric positive definite matrices.

  Gauss-Jordan elimination without pivoting, unrolled over the (static)
  matrix size: stable for positive definite a. A zero or non-finite pivot
  gives non-finite entries in x, for the caller to detect.

  Args:
    a: `[batch, m, m]`.
    b: `[batch, m]`.

  Returns:
    `[batch, m]`.
  """
  m = a.shape[-1]
  augmented = jnp.concatenate([a, b[..., None]], axis=-1)   # [batch, m, m+1]
  eye = jnp.eye(m, dtype=a.dtype)
  for k in range(m):
    # Materialise each stage. Fused into the next one, a stage is recomputed
    # for every entry that reads it: Anderson's whole step took 9.0 us
    # instead of 6.4 us on a 16 x 64 state (CPU).
    augmented = lax.optimization_barrier(augmented)
    pivot_row = augmented[:, k, :] / augmented[:, k, k:k + 1]
    # Row k becomes the pivot row; every other row i loses a[i, k] of it.
    factor = augmented[:, :, k] - eye[k]
    augmented = augmented - factor[:, :, None] * pivot_row[:, None, :]
  return augmented[:, :, m]


@dataclasses.dataclass(frozen=True)
class Anderson:
  """Anderson acceleration.

  Attributes:
    history: number of past iterates mixed (m).
    mixing: beta; the step is sum_i alpha_i (y_i + beta * g_i). 1 is undamped.
    ridge: Tikhonov term relative to the mean diagonal of the Gram matrix.
    max_weight: weights larger than this in magnitude mark the small system as
      ill-conditioned; that example falls back to y + beta * g.
  """

  history: int = 5
  mixing: float = 1.0
  ridge: float = 1e-4
  max_weight: float = 1e4

  def __post_init__(self):
    if self.history < 1:
      raise ValueError(f"Anderson history must be >= 1; got {self.history}.")
    if not 0.0 < self.mixing <= 1.0:
      raise ValueError(
          f"Anderson mixing must lie in (0, 1]; got {self.mixing}.")
    if self.ridge < 0:
      raise ValueError(f"Anderson ridge must be >= 0; got {self.ridge}.")

  def init(self, y: jax.Array, g: jax.Array) -> AndersonMemory:
    batch, dim = y.shape
    history = jnp.zeros((batch, self.history, dim), y.dtype)
    return AndersonMemory(
        targets=history, residuals=history,
        gram=jnp.zeros((batch, self.history, self.history), y.dtype))

  def propose(self, memory, y, g, step):
    m = self.history
    slot = step % m
    plain = y + self.mixing * g
    targets = lax.dynamic_update_index_in_dim(memory.targets, plain, slot, 1)
    residuals = lax.dynamic_update_index_in_dim(memory.residuals, g, slot, 1)
    # Only the new residual's row and column of the Gram matrix change.
    row = jnp.einsum("bmd,bd->bm", lax.stop_gradient(residuals),
                     lax.stop_gradient(g), precision=_HIGHEST)
    is_slot = jnp.arange(m) == slot
    gram = jnp.where(is_slot[:, None], row[:, None, :],
                     jnp.where(is_slot, row[:, :, None],
                               lax.stop_gradient(memory.gram)))
    alpha, ok = self._weights(gram, step)
    mixed = jnp.einsum("bm,bmd->bd", alpha, targets, precision=_HIGHEST)
    y_next = jnp.where(ok[:, None], mixed, plain)
    return y_next, AndersonMemory(targets, residuals, gram)

  def _weights(self, gram, step):
    """Mixing weights [batch, m] and a per-example flag that they are usable."""
    m = self.history
    dtype = gram.dtype
    num_valid = jnp.minimum(step + 1, m)
    valid = (jnp.arange(m) < num_valid).astype(dtype)          # [m]
    eye = jnp.eye(m, dtype=dtype)
    gram = gram * (valid[:, None] * valid[None, :])
    scale = jnp.trace(gram, axis1=1, axis2=2) / num_valid.astype(dtype)
    # Unused slots get an identity row and a zero right-hand side: weight 0.
    system = (gram + (self.ridge * scale)[:, None, None] * (eye * valid)
              + eye * (1.0 - valid))
    # A zero history (an example at its fixed point, or frozen) would make the
    # system singular: solve a harmless one and take the plain step.
    usable = scale > 0
    system = jnp.where(usable[:, None, None], system, eye)
    x = solve_small_spd(system, jnp.broadcast_to(valid, gram.shape[:2]))
    alpha = x / jnp.sum(x, axis=1, keepdims=True)
    ok = (jnp.all(jnp.isfinite(alpha), axis=1)
          & (jnp.max(jnp.abs(alpha), axis=1) < self.max_weight)
          & usable)
    return jnp.where(ok[:, None], alpha, 0.0), ok
