"""The Attractor reasoner: TRM's protocol with the latent recursion solved.

One segment, from the carry (y, z) and the embedded puzzle x:

    repeat H times (the first H - 1 without gradient):
      z* = solve z = F(z; x, y) = net(z + y + x), from the carried z
      y <- net(y + z*)

The solve is `attractor_jax.fixed_point`, trained with the phantom gradient
(K = 2) by default or any other backward mode. Warm starts from the previous
segment's z make later solves short. In training, a Hutchinson estimate of
||dF/dz||_F^2 / dim at z* is returned as the auxiliary loss.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import solvers
from attractor_jax.models.reasoning import common
from attractor_jax.models.reasoning.config import AttractorReasonerConfig


class AttractorReasoner(common.RecursiveReasoner):
  """Fixed-point latent, answer update, halting head; one segment per call."""

  config: AttractorReasonerConfig

  def __init__(self, config: AttractorReasonerConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    # Probes of the Jacobian penalty: a stream of its own, advanced on every
    # training call (also under nnx.jit).
    self.penalty_rngs = nnx.Rngs(penalty=rngs.params())

  def __call__(self, inputs: jax.Array, carry: common.ReasonerCarry, *,
               puzzle_ids: Optional[jax.Array] = None, train: bool = False,
               depth: Optional[int] = None
               ) -> tuple[common.ReasonerCarry, common.SegmentOutput]:
    """Runs one segment.

    Args:
      inputs: int `[batch, seq_len]` puzzle tokens.
      carry: (y, z) from `initial_carry` or the previous segment (detached
        by the caller).
      puzzle_ids: int `[batch]`; None: all 0 ("unknown").
      train: compute the Jacobian penalty (`aux_loss`).
      depth: test-time solver step limit; None: config.solve.max_iter; 0
        keeps the starting z.

    Returns:
      The new carry (not detached) and the segment's outputs; `stats` are
      those of the last solve.
    """
    config = self.config
    x, y, z = self._start(inputs, carry, puzzle_ids)
    if not config.warm_start:
      z = self.initial_carry(inputs.shape[0]).z
    net, params = self.net.functional()
    solve_kwargs = config.solve.fixed_point_kwargs(depth)

    def latent_map(params, z, c):
      return net(params, z + c)

    def cycle(params, x, y, z):
      c = x + y
      z_star, stats = solvers.fixed_point(latent_map, params, c, z,
                                          **solve_kwargs)
      return net(params, y + z_star), z_star, stats, c

    if config.h_cycles > 1:
      frozen, x_frozen, y, z = jax.lax.stop_gradient((params, x, y, z))
      for _ in range(config.h_cycles - 1):
        y, z, _, _ = cycle(frozen, x_frozen, y, z)
    y, z, stats, c = cycle(params, x, y, z)

    aux_loss = None
    if train and config.jacobian_penalty_weight > 0:
      penalty = solvers.jacobian_frobenius_penalty(
          latent_map, params, jax.lax.stop_gradient(z), c,
          self.penalty_rngs.penalty(),
          num_samples=config.jacobian_penalty_samples)
      aux_loss = config.jacobian_penalty_weight * jnp.mean(penalty)
    return common.ReasonerCarry(y, z), self._outputs(y, stats, aux_loss)
