"""The DEQ baseline of the paper's Table 3: a hidden-state equilibrium.

    e = E[x];  z* = solve z = f(z; e) from z0 = 0;  logits = RMSNorm(z*) W_out
    f(z; e) = Core(z + e) - z = e + R(z + e)

Core is `num_layers` ordinary (ungated) pre-norm blocks and R their summed
residual update. f is Core applied to the injected state, without Core's
identity path on z: with it, z = z + e + R(z + e) would have Jacobian I + R'
and plain iteration would drift by e every step. Compared with the Attractor
LM there is no backbone (the injection is the raw embedding), no gates, the
solve starts from zero, and the output head is untied by definition (the
paper's "DEQ + tied unembedding" is a separate ablation).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import solvers
from attractor_jax.models import lm_common
from attractor_jax.models.config import DEQConfig
from attractor_jax.nn import attractor_head
from attractor_jax.nn import blocks


def core_map(core, z: jax.Array, e: jax.Array, *, positions=None,
             segment_ids=None) -> jax.Array:
  """f(z; e) = e + R(z + e), R the summed residual updates of `core`."""
  return e + blocks.summed_branches(core, z + e, positions=positions,
                                    segment_ids=segment_ids)


class DEQ(nnx.Module):
  """Embedding, core blocks solved to an equilibrium, untied unembedding."""

  def __init__(self, config: DEQConfig, *, rngs: nnx.Rngs):
    lm_common.check_config("DEQ", config, DEQConfig)
    if config.norm != "pre":
      raise ValueError("The DEQ core's blocks must be pre-norm.")
    self.config = config
    self.embed = lm_common.Embedding(config, rngs=rngs)
    spec = config.block_spec(dtype=config.jnp_head_dtype)
    self.core = nnx.List(
        [blocks.Block(spec, rngs=rngs) for _ in range(config.num_layers)])
    self.unembed = lm_common.Unembedding(config, None, rngs=rngs)

  def map(self, z: jax.Array, e: jax.Array, *, positions=None,
          segment_ids=None) -> jax.Array:
    """f(z; e) = e + R(z + e)."""
    return core_map(self.core, z, e, positions=positions,
                    segment_ids=segment_ids)

  def solve(self, e: jax.Array, *, positions=None, segment_ids=None,
            max_iter: Optional[int] = None, backward_probe=None
            ) -> tuple[jax.Array, solvers.SolverStats]:
    """z* and its per-sequence solver stats, solving from z0 = 0."""
    graphdef, state = nnx.split(self.core)

    def f(state, z, e):
      return core_map(nnx.merge(graphdef, state), z, e, positions=positions,
                      segment_ids=segment_ids)

    return solvers.fixed_point(
        f, state, e, jnp.zeros_like(e), backward_probe=backward_probe,
        **self.config.solve.fixed_point_kwargs(
            attractor_head.effective_max_iter(max_iter)))

  def __call__(self, tokens: jax.Array, *, targets: Optional[jax.Array] = None,
               positions=None, segment_ids=None, max_iter: Optional[int] = None,
               backward_probe=None) -> lm_common.LMOutput:
    """Logits (and loss given targets) with the solver stats.

    Args:
      tokens: int `[batch, seq]`.
      targets: int `[batch, seq]`; `config.ignore_index` entries are skipped.
      positions, segment_ids: int `[batch, seq]` (packed documents).
      max_iter: test-time solver steps; 0 unembeds the zero start state.
      backward_probe: see `attractor_jax.backward_probe`.
    """
    lm_common.check_tokens(tokens)
    if positions is None:
      positions = lm_common.default_positions(tokens)
    e = self.embed(tokens)
    z, stats = self.solve(e, positions=positions, segment_ids=segment_ids,
                          max_iter=max_iter, backward_probe=backward_probe)
    logits = self.unembed(z, None)
    loss = None
    if targets is not None:
      loss = lm_common.cross_entropy(logits, targets, self.config.ignore_index)
    return lm_common.LMOutput(logits=logits, loss=loss, stats=stats)
