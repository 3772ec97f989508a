"""The Attractor language model (docs/design.md section 1).

    e = E[x];  c = Backbone(e);  y* = solve y = c + R(y + c);
    logits = RMSNorm(y*) @ E^T
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models import lm_common
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.nn import attractor_head
from attractor_jax.nn import block_stack
from attractor_jax.nn.kv_cache import KVCache


class AttractorLM(nnx.Module):
  """Embedding, causal backbone, attractor head, tied unembedding.

  The backbone is an nnx.List of Blocks, or with `config.scan_layers` a
  `BlockStack` (parameters stacked, one scan; `block_stack.stack_layers(
  params, "backbone")` converts the first layout to the second).
  """

  def __init__(self, config: AttractorLMConfig, *, rngs: nnx.Rngs):
    lm_common.check_config("AttractorLM", config, AttractorLMConfig)
    self.config = config
    self.embed = lm_common.Embedding(config, rngs=rngs)
    self.backbone = block_stack.make_layers(
        config.block_spec(), config.num_layers, scan=config.scan_layers,
        remat=config.remat, rngs=rngs)
    self.head = attractor_head.AttractorHead(
        config.block_spec(gated=True, dtype=config.jnp_head_dtype),
        config.head_layers, config.solve, injection=config.injection,
        rngs=rngs)
    self.unembed = lm_common.Unembedding(
        config, self.embed if config.tie_embeddings else None, rngs=rngs)

  def propose(self, tokens: jax.Array, *, positions=None, segment_ids=None
              ) -> jax.Array:
    """c = Backbone(E[tokens]), `[batch, seq, dim]`."""
    lm_common.check_tokens(tokens)
    positions = (lm_common.default_positions(tokens) if positions is None
                 else positions)
    return block_stack.run_layers(
        self.backbone, self.embed(tokens), positions=positions,
        segment_ids=segment_ids, remat=self.config.remat)

  def init_cache(self, batch: int, max_len: int) -> dict[str, list[KVCache]]:
    """Empty key/value caches for the backbone and the head blocks."""
    config = self.config
    head_dim = config.dim // config.num_heads
    make = lambda dtype: KVCache.empty(batch, max_len, config.num_heads,
                                       head_dim, dtype)
    return {"backbone": [make(config.jnp_dtype) for _ in self.backbone],
            "head": [make(config.jnp_head_dtype) for _ in self.head.blocks]}

  def forward_cached(self, tokens: jax.Array, cache: dict, *,
                     max_iter: Optional[int] = None):
    """Logits of new tokens that follow the cached ones, and the new cache.

    The backbone attends over its cached keys and values; the head solves
    only the new positions against its cached fixed point (see
    `AttractorHead.solve_cached`). A prompt is prefilled by calling this
    with an empty cache. A scanned backbone (`config.scan_layers`) runs here
    as a loop over its layers' parameter slices, so its caches are a list of
    per-layer KVCaches either way.

    Returns:
      (logits `[batch, new, vocab]`, updated cache, head solver stats).
    """
    lm_common.check_tokens(tokens)
    start = cache["backbone"][0].length if self.backbone else (
        cache["head"][0].length)
    positions = start + jnp.broadcast_to(jnp.arange(tokens.shape[1]),
                                         tokens.shape)
    x = self.embed(tokens)
    backbone_cache = []
    for block, block_cache in zip(self.backbone, cache["backbone"],
                                  strict=True):
      delta, (k, v) = block.branch_cached(x, positions, block_cache)
      backbone_cache.append(block_cache.append(k, v, positions))
      x = x + delta
    y, stats, head_cache = self.head.solve_cached(x, positions, cache["head"],
                                                  max_iter=max_iter)
    logits = self.unembed(y, self.embed if self.config.tie_embeddings
                          else None)
    return logits, {"backbone": backbone_cache, "head": head_cache}, stats

  def __call__(self, tokens: jax.Array, *, targets: Optional[jax.Array] = None,
               positions=None, segment_ids=None, max_iter: Optional[int] = None,
               backward_probe=None) -> lm_common.LMOutput:
    """Logits (and loss given targets) with the head's solver stats.

    Args:
      tokens: int `[batch, seq]`.
      targets: int `[batch, seq]`; `config.ignore_index` entries are skipped.
      positions, segment_ids: int `[batch, seq]` (packed documents).
      max_iter: test-time solver steps; 0 decodes the proposal c directly.
      backward_probe: see `attractor_jax.backward_probe`.
    """
    lm_common.check_tokens(tokens)
    if positions is None:
      positions = lm_common.default_positions(tokens)
    c = self.propose(tokens, positions=positions, segment_ids=segment_ids)
    y, stats = self.head(c, positions=positions, segment_ids=segment_ids,
                         max_iter=max_iter, backward_probe=backward_probe)
    logits = self.unembed(y, self.embed if self.config.tie_embeddings
                          else None)
    loss = None
    if targets is not None:
      loss = lm_common.cross_entropy(logits, targets, self.config.ignore_index)
    return lm_common.LMOutput(logits=logits, loss=loss, stats=stats,
                              head_contribution=lm_common.relative_change(y, c))
