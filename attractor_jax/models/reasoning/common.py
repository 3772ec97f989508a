"""What the puzzle models share: segment interface, embedding, network, heads.

A puzzle model runs one deep-supervision segment per call:

    carry = model.initial_carry(batch_size)
    for _ in range(config.max_segments):
      carry, out = model(inputs, carry, puzzle_ids=ids, train=True)
      loss = ... out.logits, out.q_halt, out.aux_loss ...
      carry = detach(carry)          # the caller detaches between segments

The returned carry is not detached, so gradients could run across segments;
TRM's protocol (and ours) cuts them with `detach` (jax.lax.stop_gradient).
A loop that swaps halted puzzles for new ones restarts their carry with
`model.reset_carry(carry, halted)`. Under `nnx.jit`, `train` and `depth` are
static arguments (Python values that choose what is traced).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import solvers
from attractor_jax.models.reasoning.config import ReasonerConfig
from attractor_jax.nn import blocks as blocks_lib
from attractor_jax.nn import initializers

PyTree = Any
# The transformer's constant halting logit: sigmoid(10) > 0.9999, "halt
# after the first segment".
ALWAYS_HALT_LOGIT = 10.0


class ReasonerCarry(NamedTuple):
  """The state kept between segments: answer y and reasoning state z.

  Both `[batch, puzzle_emb_len + seq_len, dim]` in the config's dtype (the
  puzzle prefix positions included).
  """

  y: jax.Array
  z: jax.Array


class SegmentOutput(NamedTuple):
  """What one segment of a puzzle model returns.

  Attributes:
    logits: float32 `[batch, seq_len, vocab]`, puzzle prefix removed.
    q_halt: float32 `[batch]`, the halting logit (> 0: halt). Trained with a
      binary "the whole answer is right" target.
    stats: the solve's `SolverStats` (attractor reasoner), else None.
    aux_loss: float32 scalar to add to the loss (the weighted Jacobian
      penalty in training; 0 otherwise).
  """

  logits: jax.Array
  q_halt: jax.Array
  stats: Optional[solvers.SolverStats]
  aux_loss: jax.Array


def detach(carry: PyTree) -> PyTree:
  """The carry with gradients cut: call it between segments."""
  return jax.lax.stop_gradient(carry)


class LatentInit(nnx.Variable):
  """A fixed, untrained initial latent vector (TRM's H_init / L_init)."""


def check_inputs(inputs: jax.Array, config: ReasonerConfig) -> None:
  """Raises a clear error unless inputs are integer `[batch, seq_len]`."""
  if inputs.ndim != 2 or inputs.shape[1] != config.seq_len:
    raise ValueError(f"inputs must be [batch, {config.seq_len}]; got shape "
                     f"{inputs.shape}.")
  if not jnp.issubdtype(inputs.dtype, jnp.integer):
    raise ValueError(f"inputs must be integers; got dtype {inputs.dtype}.")


class InputEmbedding(nnx.Module):
  """x = sqrt(dim) * [puzzle prefix; E[inputs]], `[batch, total_len, dim]`.

  Token embeddings start at std 1/sqrt(dim), puzzle embeddings at zero
  (TRM's), so x starts at unit scale with an empty prefix.
  """

  def __init__(self, config: ReasonerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.tokens = initializers.make_param(
        rngs, initializers.truncated_normal(1 / math.sqrt(config.dim)),
        (config.vocab_size, config.dim), ("vocab", "embed"),
        config.jnp_param_dtype)
    self.puzzles = nnx.data(None)
    if config.puzzle_width:
      self.puzzles = initializers.make_param(
          rngs, jax.nn.initializers.zeros,
          (config.num_puzzle_ids, config.puzzle_width), (None, None),
          config.jnp_param_dtype)

  def __call__(self, inputs: jax.Array, puzzle_ids: Optional[jax.Array]
               ) -> jax.Array:
    config = self.config
    x = jnp.take(self.tokens[...], inputs, axis=0)
    if self.puzzles is not None:
      batch = inputs.shape[0]
      ids = (jnp.zeros((batch,), jnp.int32) if puzzle_ids is None
             else jnp.asarray(puzzle_ids).reshape(batch))
      # Ids outside the table (unseen puzzles) read as id 0, "unknown".
      ids = jnp.where((ids >= 0) & (ids < config.num_puzzle_ids), ids, 0)
      prefix = jnp.take(self.puzzles[...], ids, axis=0)
      pad = config.puzzle_emb_len * config.dim - config.puzzle_width
      prefix = jnp.pad(prefix, ((0, 0), (0, pad)))
      prefix = prefix.reshape(batch, config.puzzle_emb_len, config.dim)
      x = jnp.concatenate([prefix.astype(x.dtype), x], axis=1)
    x = x.astype(jnp.float32) * math.sqrt(config.dim)
    return x.astype(config.jnp_dtype)


class Network(nnx.Module):
  """The shared stack of post-norm, non-causal blocks."""

  def __init__(self, config: ReasonerConfig, *, rngs: nnx.Rngs):
    spec = config.block_spec()
    self.blocks = nnx.List(
        [blocks_lib.Block(spec, rngs=rngs) for _ in range(config.num_layers)])

  def __call__(self, h: jax.Array) -> jax.Array:
    for block in self.blocks:
      h = block(h)
    return h

  def functional(self):
    """(apply, state): apply(state, h) is this network as a pure function.

    For loops and solvers that take the parameters as an argument (and for
    cutting their gradient with stop_gradient).
    """
    graphdef, state = nnx.split(self)

    def apply(state, h):
      return nnx.merge(graphdef, state)(h)

    return apply, state


class OutputHead(nnx.Module):
  """Untied logits of y's grid positions (TRM's lm_head, no bias)."""

  def __init__(self, config: ReasonerConfig, *, rngs: nnx.Rngs):
    self.prefix = config.puzzle_emb_len
    self.weight = initializers.make_param(
        rngs, initializers.truncated_normal(config.weight_std),
        (config.dim, config.vocab_size), ("embed", "vocab"),
        config.jnp_param_dtype)

  def __call__(self, y: jax.Array) -> jax.Array:
    return jnp.einsum("btd,dv->btv", y[:, self.prefix:].astype(jnp.float32),
                      self.weight[...].astype(jnp.float32))


class HaltingHead(nnx.Module):
  """q_halt = w . y[:, 0] + b: zero weights and a negative bias at init."""

  def __init__(self, config: ReasonerConfig, *, rngs: nnx.Rngs):
    self.weight = initializers.make_param(
        rngs, jax.nn.initializers.zeros, (config.dim,), ("embed",),
        config.jnp_param_dtype)
    self.bias = initializers.make_param(
        rngs, jax.nn.initializers.constant(config.halt_bias_init), (), (),
        config.jnp_param_dtype)

  def __call__(self, y: jax.Array) -> jax.Array:
    first = y[:, 0].astype(jnp.float32)
    return (first @ self.weight[...].astype(jnp.float32)
            + self.bias[...].astype(jnp.float32))


class RecursiveReasoner(nnx.Module):
  """Embedding, shared network, output and halting heads, initial latents.

  Subclasses define `__call__(inputs, carry, *, puzzle_ids=None,
  train=False, depth=None) -> (new_carry, SegmentOutput)`.
  """

  def __init__(self, config: ReasonerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = InputEmbedding(config, rngs=rngs)
    self.net = Network(config, rngs=rngs)
    self.output = OutputHead(config, rngs=rngs)
    self.halt = HaltingHead(config, rngs=rngs)
    init = initializers.truncated_normal(1.0)
    self.y_init = LatentInit(init(rngs.params(), (config.dim,),
                                  config.jnp_dtype))
    self.z_init = LatentInit(init(rngs.params(), (config.dim,),
                                  config.jnp_dtype))

  def _broadcast(self, vector: jax.Array, batch_size: int) -> jax.Array:
    shape = (batch_size, self.config.total_len, self.config.dim)
    return jnp.broadcast_to(vector.astype(self.config.jnp_dtype), shape)

  def initial_carry(self, batch_size: int) -> ReasonerCarry:
    """y and z at every position set to the fixed initial vectors."""
    return ReasonerCarry(self._broadcast(self.y_init[...], batch_size),
                         self._broadcast(self.z_init[...], batch_size))

  def reset_carry(self, carry: ReasonerCarry, reset: jax.Array
                  ) -> ReasonerCarry:
    """The carry, restarted where bool `reset` `[batch]` is set.

    For a training loop that replaces halted puzzles with new ones.
    """
    fresh = self.initial_carry(carry.y.shape[0])
    mask = reset[:, None, None]
    return ReasonerCarry(jnp.where(mask, fresh.y, carry.y),
                         jnp.where(mask, fresh.z, carry.z))

  def _start(self, inputs, carry, puzzle_ids):
    """x and the incoming carry in the compute dtype."""
    check_inputs(inputs, self.config)
    x = self.embed(inputs, puzzle_ids)
    dtype = self.config.jnp_dtype
    return x, carry.y.astype(dtype), carry.z.astype(dtype)

  def _outputs(self, y: jax.Array, stats=None, aux_loss=None
               ) -> SegmentOutput:
    if aux_loss is None:
      aux_loss = jnp.zeros((), jnp.float32)
    return SegmentOutput(logits=self.output(y), q_halt=self.halt(y),
                         stats=stats, aux_loss=aux_loss)
