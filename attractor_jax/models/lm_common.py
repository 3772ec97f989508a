"""Pieces every language model shares: embedding, unembedding, loss, output."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax import errors
from attractor_jax import solvers
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import initializers
from attractor_jax.nn import norms
from attractor_jax.nn.dense import dense


def check_config(model_name: str, config: ModelConfig,
                 config_class: type) -> None:
  """A model is built from its own kind's config class only.

  Raises:
    errors.ConfigError: `config` is another kind's (or no ModelConfig).
  """
  if not isinstance(config, config_class):
    raise errors.ConfigError(
        f"{model_name} is built from a {config_class.__name__} (kind "
        f"{config_class.KIND!r}); got {type(config).__name__} (kind "
        f"{getattr(config, 'kind', None)!r}). Build models with "
        "models.build_model(config), which picks the config's kind.")


class LMOutput(NamedTuple):
  """What a language model returns.

  Attributes:
    logits: float32 `[batch, seq, vocab]`.
    loss: mean cross-entropy over non-ignored targets (None without targets).
    stats: solver stats of the attractor head or DEQ (None for others).
    head_contribution: attractor only: ||y* - c|| / ||c|| per sequence.
  """

  logits: jax.Array
  loss: Optional[jax.Array] = None
  stats: Optional[solvers.SolverStats] = None
  head_contribution: Optional[jax.Array] = None


def check_tokens(tokens: jax.Array) -> None:
  """Raises a clear error unless tokens are integer `[batch, seq]`."""
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, seq]; got shape {tokens.shape}.")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integers; got dtype {tokens.dtype}.")


def default_positions(tokens: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


class Embedding(nnx.Module):
  """Token embedding E `[vocab, dim]`, also usable as the tied unembedding."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.dtype = config.jnp_dtype
    self.embedding = initializers.make_param(
        rngs, initializers.truncated_normal(config.embed_init_std),
        (config.vocab_size, config.dim), ("vocab", "embed"),
        config.jnp_param_dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """x @ E^T in float32: the tied unembedding."""
    return dense(x.astype(jnp.float32),
                 self.embedding[...].astype(jnp.float32).T)


class Unembedding(nnx.Module):
  """A final RMSNorm, then tied (E^T) or untied logits, with optional soft-cap."""

  def __init__(self, config: ModelConfig, embedding: Optional[Embedding], *,
               rngs: nnx.Rngs):
    self.softcap = config.logit_softcap
    self.norm = norms.RMSNorm(config.dim, eps=config.norm_eps,
                              param_dtype=config.jnp_param_dtype, rngs=rngs)
    self.output = nnx.data(None)
    if embedding is None:
      self.output = initializers.make_param(
          rngs, initializers.truncated_normal(config.init_std),
          (config.dim, config.vocab_size), ("embed", "vocab"),
          config.jnp_param_dtype)

  def __call__(self, x: jax.Array, embedding: Optional[Embedding]) -> jax.Array:
    x = self.norm(x)
    if self.output is None:
      logits = embedding.attend(x)
    else:
      logits = dense(x.astype(jnp.float32),
                     self.output[...].astype(jnp.float32))
    if self.softcap is not None:
      logits = self.softcap * jnp.tanh(logits / self.softcap)
    return logits


def cross_entropy(logits: jax.Array, targets: jax.Array,
                  ignore_index: int) -> jax.Array:
  """Mean token cross-entropy in float32, leaving out `ignore_index` targets.

  A batch whose targets are all ignored has loss 0 (not NaN).
  """
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"targets of shape {targets.shape} do not match logits "
                     f"of shape {logits.shape[:-1]}.")
  keep = targets != ignore_index
  logits = logits.astype(jnp.float32)
  target_logits = pick_last_axis(logits, jnp.where(keep, targets, 0))
  losses = (jax.nn.logsumexp(logits, axis=-1) - target_logits) * keep
  return jnp.sum(losses) / jnp.maximum(jnp.sum(keep), 1)


def pick_last_axis(values: jax.Array, index: jax.Array) -> jax.Array:
  """`values[..., index]` per position, as a one-hot select and sum.

  Its gradient is elementwise and fuses with the softmax's, where
  `take_along_axis`'s is a scatter: an LM loss's forward and backward is
  faster this way on XLA:CPU (experiments/benchmarks/cpu_forms_benchmark.py).
  """
  hit = jnp.arange(values.shape[-1]) == index[..., None]
  return jnp.sum(jnp.where(hit, values, 0), axis=-1)


def relative_change(y: jax.Array, c: jax.Array) -> jax.Array:
  """||y - c|| / ||c|| per sequence (over all positions and channels)."""
  y = y.astype(jnp.float32).reshape(y.shape[0], -1)
  c = c.astype(jnp.float32).reshape(c.shape[0], -1)
  return jnp.linalg.norm(y - c, axis=1) / (jnp.linalg.norm(c, axis=1) + 1e-12)
