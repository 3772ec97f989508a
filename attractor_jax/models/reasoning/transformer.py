"""The plain Transformer baseline: TRM's blocks applied once, no recursion.

It has the puzzle models' interface, with an empty carry and a constant
halting logit meaning "halt after the first segment" (max_segments is 1).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models.reasoning import common
from attractor_jax.models.reasoning.config import TransformerReasonerConfig


class TransformerReasoner(nnx.Module):
  """Embedding, `num_layers` non-causal post-norm blocks, untied logits."""

  def __init__(self, config: TransformerReasonerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = common.InputEmbedding(config, rngs=rngs)
    self.net = common.Network(config, rngs=rngs)
    self.output = common.OutputHead(config, rngs=rngs)

  def initial_carry(self, batch_size: int) -> tuple:
    """The empty carry (a pytree without leaves)."""
    del batch_size
    return ()

  def reset_carry(self, carry: tuple, reset: jax.Array) -> tuple:
    del reset
    return carry

  def __call__(self, inputs: jax.Array, carry: tuple = (), *,
               puzzle_ids: Optional[jax.Array] = None, train: bool = False,
               depth: Optional[int] = None
               ) -> tuple[tuple, common.SegmentOutput]:
    """The whole prediction in one pass.

    Args:
      inputs: int `[batch, seq_len]` puzzle tokens.
      carry: the empty carry, returned unchanged.
      puzzle_ids: int `[batch]`; None: all 0 ("unknown").
      train: unused (no dropout).
      depth: must be None (the depth is fixed).
    """
    del train
    if depth is not None:
      raise ValueError("A transformer_reasoner has a fixed depth; pass "
                       "depth=None.")
    common.check_inputs(inputs, self.config)
    y = self.net(self.embed(inputs, puzzle_ids))
    batch = inputs.shape[0]
    return carry, common.SegmentOutput(
        logits=self.output(y),
        q_halt=jnp.full((batch,), common.ALWAYS_HALT_LOGIT, jnp.float32),
        stats=None, aux_loss=jnp.zeros((), jnp.float32))
