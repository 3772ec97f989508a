"""The looped baseline (Parcae style): a weight-tied core iterated T times.

    e = Prelude(E[x]);  h_0 = 0;  h_{t+1} = Core(a * h_t + b * e);
    logits = Unembed(Coda(h_T))

a = exp(-softplus(raw_a)) lies in (0, 1) per channel, so the injection
contracts the carried state; b is a learned per-channel input scale (init 1).
In training T is sampled per sequence (Poisson with mean `mean_depth`, clipped
to [1, 2 * mean_depth]) and only the last `backprop_depth` steps of each
sequence get gradients (truncated backprop). At evaluation T = mean_depth.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.models import lm_common
from attractor_jax.models.config import LoopedConfig
from attractor_jax.nn import blocks
from attractor_jax.nn import initializers


class Looped(nnx.Module):
  """Embedding, prelude, looped core with diagonal injection, coda, unembed.

  Attributes:
    prelude, core, coda: lists of pre-norm causal blocks; `core` is applied
      once per loop step (weight-tied across steps).
    raw_a: `[dim]`, the state decay a = exp(-softplus(raw_a)) (init a = 0.5).
    b: `[dim]`, the input scale of e (init 1).
  """

  def __init__(self, config: LoopedConfig, *, rngs: nnx.Rngs):
    lm_common.check_config("Looped", config, LoopedConfig)
    if config.mean_depth < 1 or config.backprop_depth < 1:
      raise ValueError(f"The looped model needs mean_depth >= 1 and "
                       f"backprop_depth >= 1; got {config.mean_depth} and "
                       f"{config.backprop_depth}.")
    self.config = config
    self.embed = lm_common.Embedding(config, rngs=rngs)
    spec = config.block_spec()

    def stack(n):
      return nnx.List([blocks.Block(spec, rngs=rngs) for _ in range(n)])

    self.prelude = stack(config.prelude_layers)
    self.core = stack(config.num_layers)
    self.coda = stack(config.coda_layers)
    self.raw_a = initializers.make_param(
        rngs, jax.nn.initializers.zeros, (config.dim,), ("embed",),
        config.jnp_param_dtype)
    self.b = initializers.make_param(
        rngs, jax.nn.initializers.ones, (config.dim,), ("embed",),
        config.jnp_param_dtype)
    self.unembed = lm_common.Unembedding(
        config, self.embed if config.tie_embeddings else None, rngs=rngs)

  @property
  def decay(self) -> jax.Array:
    """a = exp(-softplus(raw_a)) in (0, 1), float32 `[dim]`."""
    return jnp.exp(-jax.nn.softplus(self.raw_a[...].astype(jnp.float32)))

  def encode(self, tokens: jax.Array, *, positions, segment_ids=None
             ) -> jax.Array:
    """e = Prelude(E[tokens]), `[batch, seq, dim]`."""
    x = self.embed(tokens)
    for block in self.prelude:
      x = block(x, positions=positions, segment_ids=segment_ids)
    return x

  def step(self, h: jax.Array, e: jax.Array, *, positions, segment_ids=None
           ) -> jax.Array:
    """One loop step: Core(a * h + b * e)."""
    x = (self.decay * h.astype(jnp.float32)
         + self.b[...].astype(jnp.float32) * e.astype(jnp.float32))
    x = x.astype(e.dtype)
    for block in self.core:
      x = block(x, positions=positions, segment_ids=segment_ids)
    return x

  def decode(self, h: jax.Array, *, positions, segment_ids=None) -> jax.Array:
    """Logits `[batch, seq, vocab]` (float32) of the final state h."""
    for block in self.coda:
      h = block(h, positions=positions, segment_ids=segment_ids)
    return self.unembed(h, self.embed if self.config.tie_embeddings else None)

  def truncated_loop(self, e: jax.Array, depths: jax.Array, max_depth: int,
                     *, positions, segment_ids=None) -> jax.Array:
    """h after `depths[i]` steps for sequence i, from h = 0.

    Runs `max_depth` steps for the whole batch and freezes each sequence's
    state once its depth is reached; the state is cut from the graph before
    each sequence's last `backprop_depth` steps (truncated backprop).
    """
    depths = jnp.clip(depths, 0, max_depth)[:, None, None]
    h = jnp.zeros_like(e)
    for i in range(max_depth):
      h = jnp.where(i == depths - self.config.backprop_depth,
                    jax.lax.stop_gradient(h), h)
      h = jnp.where(i < depths, self.step(h, e, positions=positions,
                                          segment_ids=segment_ids), h)
    return h

  def sample_depths(self, key: jax.Array, batch_size: int,
                    max_depth: Optional[int] = None) -> jax.Array:
    """Training depths, int32 `[batch]`: Poisson(mean_depth) in [1, max]."""
    max_depth = 2 * self.config.mean_depth if max_depth is None else max_depth
    depths = jax.random.poisson(key, self.config.mean_depth, (batch_size,))
    return jnp.clip(depths, 1, max_depth).astype(jnp.int32)

  def __call__(self, tokens: jax.Array, *, targets: Optional[jax.Array] = None,
               positions=None, segment_ids=None, max_iter: Optional[int] = None,
               train: bool = False, key: Optional[jax.Array] = None,
               rngs: Optional[nnx.Rngs] = None,
               depths: Optional[jax.Array] = None) -> lm_common.LMOutput:
    """Logits (and loss given targets).

    Args:
      tokens: int `[batch, seq]`.
      targets: int `[batch, seq]`; `config.ignore_index` entries are skipped.
      positions, segment_ids: int `[batch, seq]` (packed documents).
      max_iter: at evaluation, the loop depth T (default `mean_depth`); T = 0
        leaves h = 0, so the coda sees a state without any injection of e.
        In training, the static loop length that caps every sequence's depth
        (default 2 * mean_depth).
      train: sample a depth per sequence and truncate backprop to the last
        `backprop_depth` steps of each sequence. The loop runs to the static
        maximum; a sequence's state is frozen once its depth is reached.
      key, rngs: randomness of the depth sampling in training (a key, or the
        `depth` stream of an nnx.Rngs); not needed when `depths` is given.
      depths: int `[batch]`, training depths to use instead of sampling them
        (clipped to [0, max]).
    """
    lm_common.check_tokens(tokens)
    if positions is None:
      positions = lm_common.default_positions(tokens)
    kwargs = dict(positions=positions, segment_ids=segment_ids)
    if not train:
      e = self.encode(tokens, **kwargs)
      h = jnp.zeros_like(e)
      for _ in range(self.config.mean_depth if max_iter is None else max_iter):
        h = self.step(h, e, **kwargs)
    else:
      max_depth = 2 * self.config.mean_depth if max_iter is None else max_iter
      if depths is None:
        if key is None and rngs is None:
          raise ValueError("train=True needs a key, rngs or depths to set "
                           "each sequence's loop depth.")
        key = rngs.depth() if key is None else key
        depths = self.sample_depths(key, tokens.shape[0], max_depth)
      h = self.truncated_loop(self.encode(tokens, **kwargs), depths,
                              max_depth, **kwargs)
    logits = self.decode(h, **kwargs)
    loss = None
    if targets is not None:
      loss = lm_common.cross_entropy(logits, targets, self.config.ignore_index)
    return lm_common.LMOutput(logits=logits, loss=loss)
