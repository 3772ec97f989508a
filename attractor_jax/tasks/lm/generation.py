"""Sampling from an Attractor LM, with or without key/value caches.

Cached decoding prefills the prompt once, then each new token runs the
backbone over cached keys/values and solves the head for that position alone
against its cached fixed point (O(1) head work per token). Uncached decoding
re-runs the whole model, re-solving every position, for each new token: the
reference it is tested against, and the public code's behaviour.

Decoding never runs past its caches (they are built for the whole output, and
a cache that overflowed anyway is an error), and warns when it runs past the
context the model was trained on.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from attractor_jax.nn import kv_cache


def sample_token(logits: jax.Array, key: jax.Array, temperature: float,
                 top_k: Optional[int]) -> jax.Array:
  """One token per row of `[batch, vocab]` logits; temperature 0 is greedy."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0; got {temperature}.")
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


# The model travels split (graphdef static, state as arrays) through plain
# jax.jit, and sampling happens inside the step: per-token Python overhead is
# what cached decoding must avoid.
_STATIC = ("graphdef", "temperature", "top_k", "max_iter")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _cached_step(graphdef, state, tokens, cache, keys, index, *, temperature,
                 top_k, max_iter):
  model = nnx.merge(graphdef, state)
  logits, cache, _ = model.forward_cached(tokens, cache, max_iter=max_iter)
  logits = logits[:, -1]
  token = sample_token(logits, keys[index], temperature, top_k)
  return token, logits, cache


@functools.partial(jax.jit, static_argnames=_STATIC)
def _uncached_step(graphdef, state, buffer, length, keys, index, *,
                   temperature, top_k, max_iter):
  logits = nnx.merge(graphdef, state)(buffer, max_iter=max_iter).logits
  logits = jnp.take(logits, length - 1, axis=1)
  token = sample_token(logits, keys[index], temperature, top_k)
  buffer = buffer.at[:, length].set(token, mode="drop")
  return token, logits, buffer


def generate(model: nnx.Module, prompt: jax.Array, num_new_tokens: int, *,
             key: jax.Array, temperature: float = 1.0,
             top_k: Optional[int] = None, cached: bool = True,
             max_iter: Optional[int] = None, return_logits: bool = False,
             trained_context: Optional[int] = None):
  """Extends int `[batch, prompt_len]` prompts by `num_new_tokens` tokens.

  Args:
    model: an AttractorLM (cached decoding needs `init_cache` and
      `forward_cached`; uncached decoding works for any LM of this package).
    prompt: the prompts, all of one length.
    num_new_tokens: tokens to sample (>= 1).
    key: PRNG key for sampling.
    temperature: 0 for greedy decoding.
    top_k: sample among the k most likely tokens.
    cached: use key/value caches (fast) or re-run the whole model per token.
    max_iter: test-time solver steps of the head (None: as configured).
    return_logits: also return the `[batch, num_new_tokens, vocab]` logits
      that each sampled token was drawn from.
    trained_context: the sequence length the model was trained on (the
      training config's `data.seq_len`); decoding to more positions than this
      warns once, as those positions were never seen in training.

  Returns:
    int32 `[batch, prompt_len + num_new_tokens]`, and the logits if asked.

  Raises:
    ValueError: for bad arguments, or if a key/value cache overflowed.
  """
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be [batch, length >= 1]; got {prompt.shape}.")
  if num_new_tokens < 1:
    raise ValueError(f"num_new_tokens must be >= 1; got {num_new_tokens}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0; got {temperature}.")
  prompt = prompt.astype(jnp.int32)
  batch, prompt_len = prompt.shape
  total = prompt_len + num_new_tokens
  if trained_context is not None and total > trained_context:
    warnings.warn(
        f"Decoding {total} positions, past the {trained_context} positions "
        f"the model was trained on: positions {trained_context}..{total - 1} "
        "were never seen in training, so their outputs are unreliable.",
        stacklevel=2)
  keys = jax.random.split(key, num_new_tokens)
  graphdef, state = nnx.split(model)
  static = dict(graphdef=graphdef, temperature=float(temperature),
                top_k=top_k, max_iter=max_iter)
  tokens, all_logits = [], []
  if cached:
    cache = model.init_cache(batch, total)
    token, logits, cache = _cached_step(
        state=state, tokens=prompt, cache=cache, keys=keys, index=0, **static)
  else:
    buffer = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(
        prompt)
    token, logits, buffer = _uncached_step(
        state=state, buffer=buffer, length=prompt_len, keys=keys, index=0,
        **static)
  for i in range(1, num_new_tokens + 1):
    tokens.append(token)
    all_logits.append(logits)
    if i == num_new_tokens:
      break
    if cached:
      token, logits, cache = _cached_step(
          state=state, tokens=token[:, None], cache=cache, keys=keys, index=i,
          **static)
    else:
      token, logits, buffer = _uncached_step(
          state=state, buffer=buffer, length=prompt_len + i, keys=keys,
          index=i, **static)
  if cached:
    kv_cache.check_not_overflowed(cache)
  out = jnp.concatenate([prompt, jnp.stack(tokens, axis=1)], axis=1)
  if return_logits:
    return out, jnp.stack(all_logits, axis=1)
  return out
