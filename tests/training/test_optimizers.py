"""Tests of attractor_jax.training.optimizers."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.training import optimizers

TINY = ModelConfig(vocab_size=64, dim=32, num_heads=2, mlp_dim=64,
                   num_layers=1, head_layers=1)


def tiny_model(**changes):
  return AttractorLM(TINY.replace(**changes), rngs=nnx.Rngs(0))


def flat(tree):
  return {jax.tree_util.keystr(p): x
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def toy_params():
  """A dict with one parameter of each group, named like the model's."""
  keys = jax.random.split(jax.random.key(0), 6)
  return {
      "backbone": {"w": jax.random.normal(keys[0], (16, 32)),
                   "attn_norm": {"scale": jnp.ones((16,))}},
      "embed": {"embedding": jax.random.normal(keys[1], (8, 16))},
      "head": {"w": jax.random.normal(keys[2], (16, 16)),
               "attn_gate": {"raw": jax.random.normal(keys[3], (16,))}},
  }


def config(**changes):
  fields = dict(lr=1e-2, clip_norm=None, weight_decay=0.0, fp_wd=0.0, eps=1e-12)
  fields.update(changes)
  return optimizers.OptimizerConfig(**fields)


# ---------------------------------------------------------------- schedules


def test_trapezoid_schedule_key_steps():
  lr = optimizers.make_schedule("trapezoid", 1.0, total_steps=100,
                                warmup_steps=10, decay_fraction=0.5)
  expected = {0: 0.0, 5: 0.5, 10: 1.0, 30: 1.0, 50: 1.0, 75: 0.5, 99: 0.02,
              100: 0.0, 150: 0.0}
  for step, value in expected.items():
    np.testing.assert_allclose(lr(step), value, atol=1e-6, err_msg=str(step))


def test_constant_and_cosine_schedules():
  constant = optimizers.make_schedule("constant", 2.0, 100, warmup_steps=4)
  np.testing.assert_allclose([constant(s) for s in (0, 2, 4, 100, 1000)],
                             [0.0, 1.0, 2.0, 2.0, 2.0])
  cosine = optimizers.make_schedule("cosine", 1.0, 110, warmup_steps=10,
                                    final_lr_fraction=0.1)
  np.testing.assert_allclose([cosine(s) for s in (10, 60, 110, 200)],
                             [1.0, 0.55, 0.1, 0.1], atol=1e-6)


def test_schedule_rejects_bad_arguments():
  with pytest.raises(ValueError, match="Unknown schedule"):
    optimizers.make_schedule("linear", 1.0, 10)
  with pytest.raises(ValueError, match="decay_fraction"):
    optimizers.make_schedule("trapezoid", 1.0, 10, decay_fraction=1.5)


def test_schedule_is_traceable():
  lr = optimizers.make_schedule("trapezoid", 1.0, 100, warmup_steps=10)
  np.testing.assert_allclose(jax.jit(lr)(jnp.int32(75)), 0.5)


# ------------------------------------------------------------------- labels


def test_labels_of_every_attractor_lm_param():
  labels = flat(optimizers.param_labels(nnx.state(tiny_model(), nnx.Param)))
  expected = {}
  for block in ("['backbone'][0]", "['head']['blocks'][0]"):
    group = "head" if "head" in block else None
    for name in ("['attn']['wq']", "['attn']['wk']", "['attn']['wv']",
                 "['attn']['wo']", "['mlp']['w_in']", "['mlp']['w_out']"):
      expected[block + name] = group or "matrix"
    for name in ("['attn_norm']['scale']", "['mlp_norm']['scale']",
                 "['attn']['q_norm']['scale']", "['attn']['k_norm']['scale']"):
      expected[block + name] = group or "norm_or_gate"
  for gate in ("['attn_gate']['raw']", "['mlp_gate']['raw']"):
    expected["['head']['blocks'][0]" + gate] = "head"
  expected["['embed']['embedding']"] = "embedding"
  expected["['unembed']['norm']['scale']"] = "norm_or_gate"
  assert labels == expected


def test_labels_of_untied_output_and_pure_state():
  state = nnx.state(tiny_model(tie_embeddings=False, mlp="swiglu"), nnx.Param)
  labels = flat(optimizers.param_labels(state))
  assert labels["['unembed']['output']"] == "embedding"
  assert labels["['backbone'][0]['mlp']['w_gate']"] == "matrix"
  assert labels == flat(optimizers.param_labels(nnx.as_pure(state)))
  sizes = optimizers.group_sizes(state)
  assert sum(sizes.values()) == sum(x.size for x in jax.tree.leaves(state))


def test_muon_dimension_numbers_of_attention_weights():
  dn = optimizers.muon_dimension_numbers
  assert dn(("attn", "wq"), 3) == optax.contrib.MuonDimensionNumbers(0, (1, 2))
  assert dn(("attn", "wo"), 3) == optax.contrib.MuonDimensionNumbers((0, 1), 2)
  assert dn(("mlp", "w_in"), 2) == optax.contrib.MuonDimensionNumbers(0, 1)


@pytest.mark.heavy
def test_muon_views_scanned_layers_one_layer_at_a_time():
  dn = optimizers.muon_dimension_numbers
  assert dn(("backbone", "layers", "attn", "wq"), 4) == (
      optax.contrib.MuonDimensionNumbers(1, (2, 3)))
  assert dn(("backbone", "layers", "attn", "wo"), 4) == (
      optax.contrib.MuonDimensionNumbers((1, 2), 3))
  assert dn(("blocks", "layers", "mlp", "w_in"), 3) == (
      optax.contrib.MuonDimensionNumbers(1, 2))
  # A stacked update equals the layers' own updates, stacked.
  layers = [ill_conditioned(seed, 16, 32) for seed in (0, 1, 2)]
  stacked = {"backbone": {"layers": {"mlp": {"w_in": jnp.stack(layers)}}}}
  single = [{"backbone": {"mlp": {"w_in": g}}} for g in layers]
  cfg = config(name="muon", lr=1.0, eps=1e-8)
  up = first_update(cfg, jax.tree.map(jnp.zeros_like, stacked), stacked)
  for i, grads in enumerate(single):
    one = first_update(cfg, jax.tree.map(jnp.zeros_like, grads), grads)
    np.testing.assert_allclose(up["backbone"]["layers"]["mlp"]["w_in"][i],
                               one["backbone"]["mlp"]["w_in"], rtol=1e-4,
                               atol=1e-6)


# ---------------------------------------------------------------- optimizer


def first_update(cfg, params, grads):
  tx = optimizers.make_optimizer(cfg)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return updates


def test_head_learning_rate_is_scaled():
  # AdamW's first step moves each coordinate by lr (m / sqrt(v) = sign(g)).
  params = toy_params()
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape),
                       params)
  updates = first_update(config(fp_lr_scale=0.25), params, grads)
  np.testing.assert_allclose(jnp.abs(updates["head"]["w"]), 0.0025, rtol=1e-4)
  np.testing.assert_allclose(jnp.abs(updates["head"]["attn_gate"]["raw"]),
                             0.0025, rtol=1e-4)
  np.testing.assert_allclose(jnp.abs(updates["backbone"]["w"]), 0.01,
                             rtol=1e-4)
  np.testing.assert_allclose(jnp.abs(updates["embed"]["embedding"]), 0.01,
                             rtol=1e-4)


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_weight_decay_groups(name):
  # With zero gradients an update is -lr * wd * param, or zero without decay.
  params = toy_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  up = first_update(config(name=name, lr=0.1, weight_decay=0.0, fp_wd=0.5),
                    params, zeros)
  np.testing.assert_allclose(up["head"]["w"], -0.05 * params["head"]["w"],
                             rtol=1e-5)
  for leaf in (up["head"]["attn_gate"]["raw"], up["backbone"]["w"],
               up["backbone"]["attn_norm"]["scale"], up["embed"]["embedding"]):
    np.testing.assert_array_equal(leaf, 0.0)
  up = first_update(config(name=name, lr=0.1, weight_decay=0.3, fp_wd=0.0),
                    params, zeros)
  np.testing.assert_allclose(up["backbone"]["w"],
                             -0.03 * params["backbone"]["w"], rtol=1e-5)
  for leaf in (up["head"]["w"], up["backbone"]["attn_norm"]["scale"],
               up["embed"]["embedding"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_fp_wd_defaults_to_weight_decay_and_embed_wd_is_opt_in():
  params = toy_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  up = first_update(config(lr=0.1, weight_decay=0.3, fp_wd=None, embed_wd=0.2),
                    params, zeros)
  np.testing.assert_allclose(up["head"]["w"], -0.03 * params["head"]["w"],
                             rtol=1e-5)
  np.testing.assert_allclose(up["embed"]["embedding"],
                             -0.02 * params["embed"]["embedding"], rtol=1e-5)


def singular_values(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def ill_conditioned(seed, rows, cols):
  """A random `[rows, cols]` matrix with singular values from 1e-2 to 1."""
  k = min(rows, cols)
  u, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (rows, k)))
  v, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed + 1), (cols, k)))
  return (u * jnp.logspace(-2, 0, k)) @ v.T


def test_muon_orthogonalises_matrix_updates():
  # Also the rank-3 attention weights, viewed as [embed, heads * head_dim]
  # and [heads * head_dim, embed].
  grads = {"backbone": {"w": ill_conditioned(0, 16, 32),
                        "wq": ill_conditioned(2, 32, 32).reshape(32, 2, 16),
                        "wo": ill_conditioned(4, 32, 32).reshape(2, 16, 32)}}
  params = jax.tree.map(jnp.zeros_like, grads)
  up = first_update(config(name="muon", lr=1.0, eps=1e-8), params, grads)
  for name, shape in (("w", (16, 32)), ("wq", (32, 32)), ("wo", (32, 32))):
    grad_s = singular_values(grads["backbone"][name].reshape(shape))
    assert grad_s.max() / grad_s.min() > 50
    s = singular_values(up["backbone"][name].reshape(shape))
    assert s.max() / s.min() < 2.0, (name, s)


@pytest.mark.heavy
def test_plain_optax_on_nnx_state_and_config_dict():
  state = nnx.state(tiny_model(), nnx.Param)
  cfg = ml_collections.ConfigDict(dict(name="muon", lr=1e-3, clip_norm=1.0,
                                       schedule="trapezoid", total_steps=10))
  tx = optimizers.make_optimizer(cfg)
  params = nnx.as_pure(state)
  opt_state = tx.init(state)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt_state = jax.jit(tx.update)(grads, opt_state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert int(optimizers.skipped_updates(opt_state)) == 0
  with pytest.raises(ValueError, match="Unknown optimizer config fields"):
    optimizers.make_optimizer(dict(name="adamw", learning_rate=1.0))
  with pytest.raises(ValueError, match="Unknown optimizer"):
    optimizers.OptimizerConfig(name="sgd")


def test_adamw_and_muon_fit_a_toy_regression():
  x = jax.random.normal(jax.random.key(0), (64, 16))
  target = x @ jax.random.normal(jax.random.key(1), (16, 8))
  params = {"backbone": {"w": jnp.zeros((16, 8))}, "head": {"w": jnp.eye(8)},
            "unembed": {"norm": {"scale": jnp.ones((8,))}}}
  loss_fn = lambda p: jnp.mean(
      ((x @ p["backbone"]["w"] * p["unembed"]["norm"]["scale"]) @ p["head"]["w"]
       - target) ** 2)
  for name in ("adamw", "muon"):
    tx = optimizers.make_optimizer(config(name=name, lr=0.05, clip_norm=1.0))

    @jax.jit
    def step(p, s):
      loss, grads = jax.value_and_grad(loss_fn)(p)
      updates, s = tx.update(grads, s, p)
      return optax.apply_updates(p, updates), s, loss

    p, s = params, tx.init(params)
    losses = []
    for _ in range(30):
      p, s, loss = step(p, s)
      losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], (name, losses)


@pytest.mark.heavy
def test_training_an_attractor_lm_reduces_loss_and_skips_nan_gradients():
  model = tiny_model(out_init_scale=1.0)
  cfg = optimizers.OptimizerConfig(name="muon", lr=1e-2, schedule="trapezoid",
                                   warmup_steps=2, total_steps=12,
                                   weight_decay=0.01, fp_lr_scale=0.5)
  opt = nnx.Optimizer(model, optimizers.make_optimizer(cfg), wrt=nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (4, 17), 0, 64)

  @nnx.jit
  def step(model, opt, poison):
    loss_fn = lambda m: m(tokens[:, :-1], targets=tokens[:, 1:]).loss
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    w_in = grads["head"]["blocks"][0]["mlp"]["w_in"]
    w_in[...] = w_in[...].at[0, 0].add(poison)     # poison: 0 or NaN
    opt.update(model, grads)
    return loss

  params = lambda: jax.tree.map(jnp.copy,
                                nnx.as_pure(nnx.state(model, nnx.Param)))
  inner = lambda: jax.tree.map(jnp.copy, optimizers._finite_state(
      nnx.as_pure(opt.opt_state)).inner_state)
  losses = [float(step(model, opt, 0.0)) for _ in range(10)]
  assert losses[-1] < losses[0] - 0.5, losses
  assert int(optimizers.skipped_updates(opt.opt_state)) == 0

  # A NaN in one gradient entry: nothing moves, the step is counted.
  before_params, before_moments = params(), inner()
  step(model, opt, jnp.nan)
  jax.tree.map(np.testing.assert_array_equal, params(), before_params)
  jax.tree.map(np.testing.assert_array_equal, inner(), before_moments)
  assert int(optimizers.skipped_updates(opt.opt_state)) == 1
  assert int(optimizers.consecutive_skipped(opt.opt_state)) == 1

  step(model, opt, 0.0)
  assert int(optimizers.skipped_updates(opt.opt_state)) == 1
  assert int(optimizers.consecutive_skipped(opt.opt_state)) == 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params(),
                       before_params)
  assert all(jax.tree.leaves(moved))


def test_preset_recipe_scales_muon_updates_to_adamw_rms():
  """The presets' recipe: AdamW (0.8, 0.95, 1e-10), fp_wd explicit, and Muon
  updates of RMS 0.2 x lr (without the rescaling, 1 / sqrt(width) x lr)."""
  from attractor_jax.configs import lm
  fields = dict(lm.get_config("attractor-140m").optimizer.to_dict(),
                schedule="constant", warmup_steps=0, total_steps=10)
  cfg = optimizers.OptimizerConfig.from_config(fields)
  assert (cfg.b1, cfg.b2, cfg.eps, cfg.fp_wd) == (0.8, 0.95, 1e-10, 0.1)
  grads = {"backbone": {"w": ill_conditioned(0, 256, 256)}}
  params = jax.tree.map(jnp.zeros_like, grads)
  rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))
  update = first_update(cfg, params, grads)["backbone"]["w"]
  np.testing.assert_allclose(rms(update) / cfg.lr, 0.2, rtol=0.1)
  plain = first_update(dataclasses.replace(cfg, muon_consistent_rms=None),
                       params, grads)["backbone"]["w"]
  assert rms(plain) / cfg.lr < 0.1
