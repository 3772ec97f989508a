"""The Attractor LM: shapes, masking, gates, the head's solve, T = 0, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from attractor_jax.models import attractor_lm
from attractor_jax.models import lm_common
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import attractor_head

VOCAB, SEQ = 64, 12
TIGHT = attractor_head.SolveConfig(max_iter=80, tol=1e-6)


def tiny_config(**changes):
  fields = dict(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64,
                num_layers=1, head_layers=2, gate_init=0.2,
                out_init_scale=1.0)
  fields.update(changes)
  return ModelConfig(**fields)


def build(**changes):
  return attractor_lm.AttractorLM(tiny_config(**changes), rngs=nnx.Rngs(0))


def tokens(seed=0, batch=2):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, SEQ), 0, VOCAB)


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_shapes_dtypes_and_a_converged_head_at_init(dtype):
  model = build(dtype=dtype)
  out = model(tokens(), targets=tokens(1))
  assert out.logits.shape == (2, SEQ, VOCAB)
  assert out.logits.dtype == jnp.float32
  assert out.loss.shape == () and bool(jnp.isfinite(out.loss))
  assert out.stats.iterations.shape == (2,)
  # A fresh tiny model's head contracts: every sequence converges.
  assert bool(jnp.all(out.stats.converged)), out.stats
  assert bool(jnp.all(out.stats.iterations > 0))
  assert bool(jnp.all(out.head_contribution > 0))


@pytest.mark.heavy
def test_default_head_is_not_the_constant_map_and_its_gates_learn():
  model = attractor_lm.AttractorLM(
      ModelConfig(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64,
                  num_layers=1, head_layers=1), rngs=nnx.Rngs(0))
  assert not np.any(np.asarray(model.backbone[0].attn.wo[...]))
  assert np.any(np.asarray(model.head.blocks[0].attn.wo[...]))

  def loss_fn(model):
    return model(tokens(), targets=tokens(1)).loss

  grads = nnx.grad(loss_fn)(model)
  assert float(jnp.max(jnp.abs(grads.head.blocks[0].attn_gate.raw[...]))) > 0


def test_gates_start_at_layer_scale_init():
  model = build(gate_init=0.15, gate_max=0.75)
  for block in model.head.blocks:
    for gate in (block.attn_gate, block.mlp_gate):
      np.testing.assert_allclose(np.asarray(gate.value), 0.15, rtol=1e-6)
  assert all(block.attn_gate is None for block in model.backbone)


@pytest.mark.heavy
def test_changing_a_future_token_changes_no_earlier_logit():
  model = build(solve=TIGHT)
  x = tokens()
  x_changed = x.at[:, 7].set((x[:, 7] + 1) % VOCAB)
  delta = jnp.max(jnp.abs(model(x_changed).logits - model(x).logits), axis=-1)
  # The solved fixed point is causal; the iterate is within solver tolerance.
  assert float(jnp.max(delta[:, :7])) < 1e-3
  assert float(jnp.min(jnp.max(delta[:, 7:], axis=0))) > 1e-3


@pytest.mark.heavy
def test_segments_of_a_packed_sequence_do_not_see_each_other():
  model = build(solve=TIGHT)
  x = tokens()
  segments = jnp.where(jnp.arange(SEQ) < 5, 1, 2)[None].repeat(2, 0)
  x_changed = x.at[:, 2].set((x[:, 2] + 1) % VOCAB)
  out = model(x, segment_ids=segments).logits
  out_changed = model(x_changed, segment_ids=segments).logits
  delta = jnp.max(jnp.abs(out_changed - out), axis=(0, 2))
  assert float(jnp.max(delta[5:])) < 1e-3
  assert float(delta[2]) > 1e-3


def test_max_iter_zero_decodes_the_proposal():
  model = build()
  x = tokens()
  out = model(x, max_iter=0)
  c = model.propose(x)
  expected = model.unembed(c, model.embed)
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(expected),
                             rtol=1e-6)
  assert int(jnp.max(out.stats.iterations)) == 0
  np.testing.assert_array_equal(np.asarray(out.head_contribution), 0.0)
  solved = model(x)
  assert float(jnp.max(jnp.abs(solved.logits - out.logits))) > 1e-4


def test_cross_entropy_ignores_the_ignore_index():
  logits = jax.random.normal(jax.random.PRNGKey(0), (1, 4, VOCAB))
  targets = jnp.array([[3, -100, 5, -100]])
  loss = lm_common.cross_entropy(logits, targets, -100)
  log_probs = jax.nn.log_softmax(logits)
  expected = -(log_probs[0, 0, 3] + log_probs[0, 2, 5]) / 2
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  all_ignored = lm_common.cross_entropy(logits, jnp.full((1, 4), -100), -100)
  assert float(all_ignored) == 0.0


def test_cross_entropy_and_its_gradient_match_optax():
  logits = 5.0 * jax.random.normal(jax.random.PRNGKey(1), (2, 6, VOCAB))
  targets = jax.random.randint(jax.random.PRNGKey(2), (2, 6), 0, VOCAB)
  targets = targets.at[1, 2].set(-100)
  keep = targets != -100

  def reference(logits):
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(keep, targets, 0))
    return jnp.sum(losses * keep) / jnp.sum(keep)

  ours = jax.value_and_grad(
      lambda x: lm_common.cross_entropy(x, targets, -100))(logits)
  theirs = jax.value_and_grad(reference)(logits)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_pick_last_axis_is_a_gather_with_its_gradient():
  values = jax.random.normal(jax.random.PRNGKey(3), (3, 5, 7))
  index = jax.random.randint(jax.random.PRNGKey(4), (3, 5), 0, 7)
  np.testing.assert_array_equal(
      lm_common.pick_last_axis(values, index),
      jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0])
  grad = jax.grad(lambda v: jnp.sum(lm_common.pick_last_axis(v, index)))(
      values)
  np.testing.assert_array_equal(grad, jax.nn.one_hot(index, 7))


def test_logit_softcap_bounds_logits():
  out = build(logit_softcap=2.0, embed_init_std=1.0)(tokens())
  assert float(jnp.max(jnp.abs(out.logits))) <= 2.0


@pytest.mark.heavy
def test_training_steps_reduce_the_loss():
  model = build()
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  data = jnp.tile(jnp.arange(SEQ + 1) % 7, (4, 1))     # a repeating pattern

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return model(data[:, :-1], targets=data[:, 1:]).loss
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  first, grads = step(model, optimizer)
  gate_grad = grads.head.blocks[0].mlp_gate.raw[...]
  assert float(jnp.max(jnp.abs(gate_grad))) > 0      # the head learns too
  for _ in range(25):
    loss, _ = step(model, optimizer)
  assert float(loss) < 0.5 * float(first)


def test_bad_tokens_give_clear_errors():
  model = build()
  with pytest.raises(ValueError, match=r"\[batch, seq\]"):
    model(jnp.zeros((SEQ,), jnp.int32))
  with pytest.raises(ValueError, match="integers"):
    model(jnp.zeros((1, SEQ), jnp.float32))
  with pytest.raises(ValueError, match="do not match"):
    model(tokens(), targets=tokens()[:, :-1])
  with pytest.raises(ValueError, match="Unknown model.kind 'rnn'"):
    tiny_config(kind="rnn")
