"""Tiny Recursive Model (Jolicoeur-Martineau, 2025) on our blocks.

One segment, from the carry (y, z) and the embedded puzzle x:

    repeat H times:
      repeat L times:  z <- net(z + y + x)
      y <- net(y + z)

The first H - 1 cycles run without gradient (stop_gradient on everything they
read: the network's parameters, x and the carry); only the last cycle is
differentiated.
"""

from __future__ import annotations

from typing import Optional

import jax

from attractor_jax.models.reasoning import common
from attractor_jax.models.reasoning.config import TRMConfig


class TRM(common.RecursiveReasoner):
  """TRM: H cycles of L latent updates and one answer update per segment."""

  config: TRMConfig

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
      train: unused (the model has no dropout); part of the interface.
      depth: test-time L (latent updates per cycle); None: config.l_cycles.

    Returns:
      The new carry (not detached) and the segment's outputs.
    """
    del train
    config = self.config
    l_cycles = config.l_cycles if depth is None else int(depth)
    x, y, z = self._start(inputs, carry, puzzle_ids)
    net, params = self.net.functional()

    def cycle(params, x, y, z):
      z = jax.lax.fori_loop(0, l_cycles,
                            lambda _, z: net(params, z + y + x), z)
      return net(params, y + z), z

    if config.h_cycles > 1:
      # Everything the first cycles read is cut from the gradient, so they
      # are neither linearised nor kept for the backward pass.
      frozen, x_frozen, y, z = jax.lax.stop_gradient((params, x, y, z))
      y, z = jax.lax.fori_loop(
          0, config.h_cycles - 1,
          lambda _, yz: cycle(frozen, x_frozen, *yz), (y, z))
    y, z = cycle(params, x, y, z)
    return common.ReasonerCarry(y, z), self._outputs(y)
