"""The Transformer baseline: a plain pre-norm causal decoder.

    e = E[x];  h = Blocks(e);  logits = RMSNorm(h) @ E^T (or an untied head)
"""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from attractor_jax.models import lm_common
from attractor_jax.models.config import GPTConfig
from attractor_jax.nn import blocks


class GPT(nnx.Module):
  """Embedding, `config.num_layers` causal blocks, (tied) unembedding."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    lm_common.check_config("GPT", config, GPTConfig)
    self.config = config
    self.embed = lm_common.Embedding(config, rngs=rngs)
    spec = config.block_spec()
    self.blocks = nnx.List(
        [blocks.Block(spec, rngs=rngs) for _ in range(config.num_layers)])
    self.unembed = lm_common.Unembedding(
        config, self.embed if config.tie_embeddings else None, rngs=rngs)

  def __call__(self, tokens: jax.Array, *, targets: Optional[jax.Array] = None,
               positions=None, segment_ids=None, max_iter: Optional[int] = None
               ) -> lm_common.LMOutput:
    """Logits (and loss given targets).

    Args:
      tokens: int `[batch, seq]`.
      targets: int `[batch, seq]`; `config.ignore_index` entries are skipped.
      positions, segment_ids: int `[batch, seq]` (packed documents).
      max_iter: accepted for a common signature and ignored: a GPT has a
        fixed depth.
    """
    del max_iter
    lm_common.check_tokens(tokens)
    if positions is None:
      positions = lm_common.default_positions(tokens)
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x, positions=positions, segment_ids=segment_ids)
    logits = self.unembed(x, self.embed if self.config.tie_embeddings
                          else None)
    loss = None
    if targets is not None:
      loss = lm_common.cross_entropy(logits, targets, self.config.ignore_index)
    return lm_common.LMOutput(logits=logits, loss=loss)
