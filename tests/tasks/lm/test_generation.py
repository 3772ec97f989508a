"""Cached decoding (backbone and head caches) matches re-solving the prefix,
cannot run past its caches, and works under x64."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import kv_cache
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.tasks.lm import generation

VOCAB = 64


@pytest.fixture(scope="module")
def model():
  config = ModelConfig(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64,
                       num_layers=1, head_layers=2, gate_init=0.2,
                       out_init_scale=1.0,
                       solve=SolveConfig(max_iter=80, tol=1e-6))
  return AttractorLM(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def small_model():
  """One head block and Picard steps: cheaper to compile, for cache checks."""
  config = ModelConfig(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64,
                       num_layers=1, head_layers=1, gate_init=0.2,
                       out_init_scale=1.0,
                       solve=SolveConfig(solver="picard", max_iter=80,
                                         tol=1e-6))
  return AttractorLM(config, rngs=nnx.Rngs(0))


def prompt(length=5):
  return jax.random.randint(jax.random.PRNGKey(0), (2, length), 0, VOCAB)


# (init_only's y + R(y) need not contract, and the cache holds only at a
# fixed point.)
@pytest.mark.heavy
@pytest.mark.parametrize("injection", ("additive", "concat"))
def test_cached_forward_matches_the_full_forward(model, injection):
  if injection != "additive":
    model = AttractorLM(model.config.replace(injection=injection),
                        rngs=nnx.Rngs(0))
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


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_decoding_past_a_full_cache_is_an_error(small_model):
  """Six tokens through caches of four positions (issue 7 item 6).

  Before the fix, the clamped writes left the cached positions at
  [0, 1, 2, 5] and token 5's logits differed from the uncached run with no
  error.
  """
  model = small_model
  tokens = jax.random.randint(jax.random.PRNGKey(3), (1, 6), 0, VOCAB)
  step = nnx.jit(lambda m, t, c: m.forward_cached(t, c))
  cache = model.init_cache(1, 4)
  for t in range(6):
    _, cache, _ = step(model, tokens[:, t:t + 1], cache)
    if t == 3:
      kv_cache.check_not_overflowed(cache)     # four tokens fit
      full = cache
  for block_cache in cache["backbone"] + cache["head"]:
    np.testing.assert_array_equal(np.asarray(block_cache.positions),
                                  [[0, 1, 2, 3]])
    assert bool(block_cache.overflowed)
  with pytest.raises(ValueError, match="overflowed"):
    kv_cache.check_not_overflowed(cache)
  # Eagerly (outside jit), the append that does not fit raises at once.
  with pytest.raises(ValueError, match="larger max_len"):
    model.forward_cached(tokens[:, 4:5], full)


@pytest.mark.heavy
def test_generate_raises_when_a_cache_overflowed(small_model, monkeypatch):
  init_cache = small_model.init_cache

  def init_part_filled_caches(self, batch, max_len):
    # Two slots already taken: the last of the new tokens does not fit.
    return jax.tree.map(lambda c: c._replace(length=jnp.int32(2)),
                        init_cache(batch, max_len),
                        is_leaf=lambda x: isinstance(x, kv_cache.KVCache))

  monkeypatch.setattr(type(small_model), "init_cache",
                      init_part_filled_caches)
  with pytest.raises(ValueError, match="overflowed"):
    generation.generate(small_model, prompt(), 4, key=jax.random.PRNGKey(1),
                        temperature=0.0)


def test_generate_warns_once_past_the_trained_context(small_model):
  # The shapes of the test above, so nothing new is compiled.
  with pytest.warns(UserWarning, match="trained on") as record:
    generation.generate(small_model, prompt(), 4, key=jax.random.PRNGKey(1),
                        temperature=0.0, trained_context=7)
  assert len([w for w in record if "trained on" in str(w.message)]) == 1
  assert "positions 7..8" in str(record[0].message)
  with warnings.catch_warnings():
    warnings.simplefilter("error")           # within the context: silent
    generation.generate(small_model, prompt(), 4, key=jax.random.PRNGKey(1),
                        temperature=0.0, trained_context=9)


@pytest.mark.slow     # compiles both decoders again under x64 (> 10 s)
def test_cached_generation_matches_uncached_under_x64(small_model):
  model = small_model
  with jax.enable_x64(True):
    assert jnp.arange(2).dtype == jnp.int64
    cached, cached_logits = generation.generate(
        model, prompt(), 4, key=jax.random.PRNGKey(1), temperature=0.0,
        cached=True, return_logits=True)
    uncached, uncached_logits = generation.generate(
        model, prompt(), 4, key=jax.random.PRNGKey(1), temperature=0.0,
        cached=False, return_logits=True)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
  np.testing.assert_allclose(np.asarray(cached_logits),
                             np.asarray(uncached_logits), atol=1e-4)
