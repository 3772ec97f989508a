"""The Transformer baseline: a plain pre-norm causal decoder.

    e = E[x];  h = Blocks(e);  logits = RMSNorm(h) @ E^T (or an untied head)
"""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx

from attractor_jax.models import lm_common
from attractor_jax.models.config import GPTConfig
from attractor_jax.nn import block_stack


class GPT(nnx.Module):
  """Embedding, `config.num_layers` causal blocks, (tied) unembedding.

  `blocks` is an nnx.List of Blocks, or with `config.scan_layers` a
  `BlockStack` (parameters stacked, one scan; `block_stack.stack_layers(
  params, "blocks")` converts the first layout to the second).
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    lm_common.check_config("GPT", config, GPTConfig)
    self.config = config
    self.embed = lm_common.Embedding(config, rngs=rngs)
    self.blocks = block_stack.make_layers(
        config.block_spec(), config.num_layers, scan=config.scan_layers,
        remat=config.remat, rngs=rngs)
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
    x = block_stack.run_layers(self.blocks, self.embed(tokens),
                               positions=positions, segment_ids=segment_ids,
                               remat=self.config.remat)
    logits = self.unembed(x, self.embed if self.config.tie_embeddings
                          else None)
    loss = None
    if targets is not None:
      loss = lm_common.cross_entropy(logits, targets, self.config.ignore_index)
    return lm_common.LMOutput(logits=logits, loss=loss)
