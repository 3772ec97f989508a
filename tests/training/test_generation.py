"""Cached decoding (backbone and head caches) matches re-solving the prefix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import kv_cache
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.training import generation

VOCAB = 64


@pytest.fixture(scope="module")
def model():
  config = ModelConfig(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64,
                       num_layers=1, head_layers=2, gate_init=0.2,
                       out_init_scale=1.0,
                       solve=SolveConfig(max_iter=80, tol=1e-6))
  return AttractorLM(config, rngs=nnx.Rngs(0))


def prompt(length=5):
  return jax.random.randint(jax.random.PRNGKey(0), (2, length), 0, VOCAB)


def test_cached_forward_matches_the_full_forward(model):
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 10), 0, VOCAB)
  full = nnx.jit(lambda m, t: m(t).logits)(model, tokens)
  forward_cached = nnx.jit(lambda m, t, c: m.forward_cached(t, c))
  cache = model.init_cache(2, 10)
  logits, cache, stats = forward_cached(model, tokens[:, :6], cache)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, :6]),
                             atol=1e-5)
  for t in range(6, 10):
    logits, cache, stats = forward_cached(model, tokens[:, t:t + 1], cache)
    np.testing.assert_allclose(np.asarray(logits[:, 0]),
                               np.asarray(full[:, t]), atol=1e-5)
    assert bool(jnp.all(stats.converged))
  assert int(cache["head"][0].length) == 10


def test_greedy_cached_and_uncached_generation_agree(model):
  cached, cached_logits = generation.generate(
      model, prompt(), 8, key=jax.random.PRNGKey(1), temperature=0.0,
      cached=True, return_logits=True)
  uncached, uncached_logits = generation.generate(
      model, prompt(), 8, key=jax.random.PRNGKey(1), temperature=0.0,
      cached=False, return_logits=True)
  assert cached.shape == (2, 13)
  np.testing.assert_array_equal(np.asarray(cached[:, :5]),
                                np.asarray(prompt()))
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
  # Within the solver tolerance (1e-6 relative on the state).
  np.testing.assert_allclose(np.asarray(cached_logits),
                             np.asarray(uncached_logits), atol=1e-4)


def test_sampling_rules():
  logits = jnp.array([[0.0, 3.0, 1.0, 2.0]])
  key = jax.random.PRNGKey(0)
  assert int(generation.sample_token(logits, key, 0.0, None)[0]) == 1
  samples = jax.vmap(lambda k: generation.sample_token(logits, k, 1.0, 2))(
      jax.random.split(key, 200))
  assert set(np.unique(np.asarray(samples))) == {1, 3}   # top-2 only
  with pytest.raises(ValueError, match="temperature"):
    generation.sample_token(logits, key, -1.0, None)


def test_cache_overflow_is_an_error():
  with pytest.raises(ValueError, match="larger max_len"):
    kv_cache.check_room(10, 3, 12)
