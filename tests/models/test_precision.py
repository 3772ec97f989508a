"""The precision policy: float32 parameters, optimizer state, solver state and
residuals; bfloat16 compute where asked; a head that can reach its tolerance.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax.models import build_model
from attractor_jax.models import config as config_lib
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.nn.attractor_head import AttractorHead
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.training import optimizers
from attractor_jax.training import trainer

SEQ = 64


def head_heavy_config(**changes) -> AttractorLMConfig:
  """A small model whose head moves y* a quarter of ||c|| away from c (as
  the 140M preset's does at init), at the 140M preset's tolerance."""
  config = AttractorLMConfig(
      vocab_size=256, dim=128, num_heads=2, mlp_dim=512, num_layers=1,
      head_layers=1, gate_init=0.2,
      solve=SolveConfig(solver="anderson", max_iter=40, min_iter=0,
                        tol=3e-4, backward="onestep"))
  return config.replace(**changes)


def solve_stats(config, seed=0):
  model = build_model(config, rngs=nnx.Rngs(seed))
  tokens = jax.random.randint(jax.random.PRNGKey(seed), (4, SEQ), 0,
                              config.vocab_size)
  out = nnx.jit(lambda m, t: m(t))(model, tokens)
  return out, model


@pytest.mark.heavy
def test_float32_head_in_a_bfloat16_model_reaches_the_preset_tolerance():
  out, model = solve_stats(head_heavy_config(dtype="bfloat16",
                                             head_dtype="float32"))
  assert float(jnp.mean(out.head_contribution)) > 0.15
  assert bool(jnp.all(out.stats.converged)), out.stats
  assert int(jnp.max(out.stats.iterations)) < 40
  c = model.propose(jnp.zeros((1, SEQ), jnp.int32))
  assert c.dtype == jnp.bfloat16                     # the backbone computes
  assert model.head.blocks[0].spec.dtype == jnp.float32     # in bfloat16
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}


def test_bfloat16_head_has_a_residual_floor_above_the_preset_tolerance():
  """Why training refuses it: rounding keeps the residual near 8e-4 here
  (about 0.8 x 2^-8 x the head's contribution, 0.23)."""
  out, _ = solve_stats(head_heavy_config(dtype="bfloat16"))
  assert not bool(jnp.any(out.stats.converged))
  floor = float(jnp.min(out.stats.residual))
  assert 3e-4 < floor < config_lib.BF16_HEAD_MIN_TOL
  relaxed = head_heavy_config(dtype="bfloat16").solve
  relaxed = dataclasses.replace(relaxed, tol=config_lib.BF16_HEAD_MIN_TOL)
  out, _ = solve_stats(head_heavy_config(dtype="bfloat16", solve=relaxed))
  assert bool(jnp.all(out.stats.converged)), out.stats


def test_solver_iterates_stay_float32_for_a_bfloat16_proposal():
  seen = []

  class Recorder(nnx.Module):

    def __init__(self):
      self.w = nnx.Param(jnp.full((8,), 0.5))

    def __call__(self, x, **unused):
      seen.append(x.dtype)
      return jnp.tanh(x.astype(jnp.bfloat16) * self.w[...]).astype(x.dtype)

  head = AttractorHead(residual=Recorder(), solve_config=SolveConfig(
      max_iter=10, tol=1e-3))
  c = jnp.ones((2, 3, 8), jnp.bfloat16)
  y, stats = nnx.jit(lambda h, c: h(c))(head, c)
  assert y.dtype == jnp.bfloat16
  assert seen and set(seen) == {jnp.dtype(jnp.float32)}
  assert stats.residual.dtype == jnp.float32


def test_training_refuses_a_bfloat16_head_below_its_floor():
  with pytest.raises(errors.ConfigError, match="head_dtype=float32"):
    config_lib.check_head_precision(head_heavy_config(dtype="bfloat16"))
  config_lib.check_head_precision(head_heavy_config(dtype="bfloat16",
                                                    head_dtype="float32"))
  config_lib.check_head_precision(head_heavy_config())
  with pytest.raises(errors.ConfigError, match="Unknown model.head_dtype"):
    head_heavy_config(head_dtype="int8")


def test_mixed_policy_keeps_parameters_and_optimizer_state_float32():
  config = head_heavy_config(dtype="bfloat16", head_dtype="float32")
  state = trainer.create_train_state(
      config, optimizers.OptimizerConfig(total_steps=10), seed=0)
  floats = [x for x in jax.tree.leaves(nnx.state(state.optimizer))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
  cache = state.model.init_cache(1, SEQ)
  assert cache["backbone"][0].k.dtype == jnp.bfloat16
  assert cache["head"][0].k.dtype == jnp.float32
  np.testing.assert_equal(int(state.optimizer.step[...]), 0)
