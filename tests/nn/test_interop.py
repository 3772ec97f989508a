"""The attractor head and LM inside users' NNX and Linen models: they train."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.linen import meta

from attractor_jax.models import attractor_lm
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import attractor_head
from attractor_jax.nn import blocks
from attractor_jax import linen as attractor_linen

DIM, STEPS = 16, 20
SPEC = blocks.BlockSpec(dim=DIM, num_heads=2, mlp_dim=32, gate_max=1.0,
                        gate_init=0.1, out_init_scale=1.0)
SOLVE = attractor_head.SolveConfig(max_iter=8, tol=1e-4)


def regression_data():
  """x `[8, 6, 3]` and a linear target of it `[8, 6, 1]`."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 6, 3)).astype(np.float32)
  return x, x @ rng.normal(size=(3, 1)).astype(np.float32)


class NNXRegressor(nnx.Module):
  """A user's model: input projection, attractor head, output projection."""

  def __init__(self, rngs: nnx.Rngs):
    self.proj_in = nnx.Linear(3, DIM, rngs=rngs)
    self.head = attractor_head.AttractorHead(SPEC, 1, SOLVE, rngs=rngs)
    self.proj_out = nnx.Linear(DIM, 1, rngs=rngs)

  def __call__(self, x):
    y, _ = self.head(self.proj_in(x))
    return self.proj_out(y)


class LinenRegressor(nn.Module):
  """The same model in Linen, with the head through the bridge."""

  @nn.compact
  def __call__(self, x, max_iter=None):
    y, _ = attractor_linen.attractor_head_linen(SPEC, 1, SOLVE, name="head")(
        nn.Dense(DIM)(x), max_iter=max_iter)
    return nn.Dense(1)(y)


@pytest.mark.heavy
def test_head_trains_inside_an_nnx_model():
  x, target = regression_data()
  model = NNXRegressor(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

  def loss_fn(model):
    return jnp.mean((model(x) - target) ** 2)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  losses = []
  for i in range(STEPS):
    loss, grads = step(model, optimizer)
    losses.append(float(loss))
    if i == 0:
      assert jnp.any(grads.head.blocks[0].attn_gate.raw[...] != 0)
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.heavy
def test_head_trains_inside_a_linen_model():
  x, target = regression_data()
  model = LinenRegressor()
  # Building the parameters skips the solve by itself.
  params = jax.jit(model.init)(jax.random.key(0), x)["params"]
  raw = params["head"]["blocks"][0]["attn_gate"]["raw"]
  assert isinstance(raw, nnx.bridge.NNXMeta)       # logical axes travel along
  assert nn.get_partition_spec(raw) == jax.sharding.PartitionSpec("embed")
  tx = optax.adam(3e-2)
  opt_state = tx.init(params)

  def loss_fn(params):
    return jnp.mean((model.apply({"params": params}, x) - target) ** 2)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  losses = []
  for i in range(STEPS):
    params, opt_state, loss, grads = step(params, opt_state)
    losses.append(float(loss))
    if i == 0:
      gate_grad = meta.unbox(grads["head"]["blocks"][0]["attn_gate"]["raw"])
      assert jnp.any(gate_grad != 0)
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.heavy
def test_attractor_lm_through_the_linen_bridge():
  config = ModelConfig(kind="attractor", vocab_size=64, dim=32, num_heads=2,
                       mlp_dim=64, num_layers=1, head_layers=1,
                       out_init_scale=1.0)
  tokens = np.random.default_rng(1).integers(0, 64, (4, 12), dtype=np.int32)
  targets = np.roll(tokens, -1, axis=1)
  lm = attractor_linen.attractor_lm_linen(config)
  # Building the parameters skips the solve by itself.
  params = jax.jit(lm.init)(jax.random.key(0), tokens)["params"]

  # The bridged parameters are the NNX model's, by path, shape and dtype.
  nnx_params = nnx.state(nnx.eval_shape(
      lambda: attractor_lm.AttractorLM(config, rngs=nnx.Rngs(0))), nnx.Param)

  def shapes(tree):
    return jax.tree.map(lambda a: (a.shape, a.dtype), tree)

  assert shapes(meta.unbox(params)) == shapes(nnx.to_pure_dict(nnx_params))

  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      return lm.apply({"params": params}, tokens, targets=targets).loss
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  losses = []
  for _ in range(5):
    params, opt_state, loss, grads = step(params, opt_state)
    losses.append(float(loss))
  head_gate = meta.unbox(grads["head"]["blocks"][0]["mlp_gate"]["raw"])
  assert jnp.any(head_gate != 0)
  assert losses[-1] < losses[0] - 0.1, losses


def test_attractor_lm_linen_rejects_other_kinds():
  with pytest.raises(ValueError, match="language_model_linen"):
    attractor_linen.attractor_lm_linen(ModelConfig(kind="gpt"))
