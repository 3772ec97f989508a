"""The baselines: GPT, the looped (Parcae-style) model and the DEQ."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from attractor_jax import models
from attractor_jax.models import lm_common
from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import MODEL_KINDS
from attractor_jax.models.config import ModelConfig
from attractor_jax.models.deq import DEQ
from attractor_jax.models.gpt import GPT
from attractor_jax.models.looped import Looped
from attractor_jax.nn.attractor_head import SolveConfig

BATCH, SEQ, VOCAB = 2, 16, 64
TINY = dict(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64, num_layers=2,
            prelude_layers=1, coda_layers=1, mean_depth=3, backprop_depth=2)
# Picard compiles faster than Anderson on CPU, and the DEQ map contracts
# strongly at these sizes; the default (Anderson) runs in the DEQ test.
PICARD = SolveConfig(solver="picard", max_iter=32, tol=1e-3)
TIGHT = SolveConfig(solver="picard", max_iter=64, tol=1e-6)
BASELINES = ("gpt", "looped", "deq")


def tiny(kind, **changes):
  fields = dict(TINY, kind=kind, solve=PICARD)
  fields.update(changes)
  return ModelConfig(**fields)


def looped_model(seed=0, **changes):
  """Non-trivial blocks, no prelude, one core block, T = 2: short compiles."""
  fields = dict(out_init_scale=1.0, prelude_layers=0, num_layers=1,
                mean_depth=2)
  config = tiny("looped", **dict(fields, **changes))
  return Looped(config, rngs=nnx.Rngs(seed))


def random_tokens(seed=0, shape=(BATCH, SEQ)):
  return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB)


# One jitted forward shared by the tests, so equal models compile once.
@functools.partial(nnx.jit, static_argnames=("max_iter", "train"))
def forward(model, tokens, **kwargs):
  return model(tokens, **kwargs)


def test_build_model_returns_the_class_of_every_kind():
  classes = {"attractor": AttractorLM, "gpt": GPT, "looped": Looped,
             "deq": DEQ}
  assert set(classes) == set(MODEL_KINDS)
  for kind, cls in classes.items():
    model = models.build_model(tiny(kind), rngs=nnx.Rngs(0))
    assert type(model) is cls


@pytest.mark.heavy
@pytest.mark.parametrize("kind", BASELINES)
def test_outputs_and_causal_masking(kind):
  config = tiny(kind, out_init_scale=1.0, solve=TIGHT)
  model = models.build_model(config, rngs=nnx.Rngs(1))
  tokens = random_tokens(1)
  t = SEQ // 2
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
  out = forward(model, tokens, targets=tokens)
  assert out.logits.shape == (BATCH, SEQ, VOCAB)
  assert out.logits.dtype == jnp.float32
  assert out.loss.shape == () and np.isfinite(out.loss)
  assert out.head_contribution is None
  assert (out.stats is None) == (kind != "deq")
  after = forward(model, changed, targets=tokens).logits
  # Changing token t changes no logit before t (DEQ: up to the solver tol).
  atol = 1e-4 if kind == "deq" else 1e-6
  np.testing.assert_allclose(out.logits[:, :t], after[:, :t], atol=atol)
  assert np.abs(out.logits[:, t:] - after[:, t:]).max() > 1e-3


def toy_task():
  """Two periodic sequences: next-token prediction is a learnable bigram."""
  period = jnp.array([[3, 17, 42, 9], [11, 5, 60, 29]])
  sequence = jnp.tile(period, (1, SEQ // 4 + 1))[:, :SEQ + 1]
  return sequence[:, :-1], sequence[:, 1:]


@pytest.mark.heavy
@pytest.mark.parametrize("kind", BASELINES)
def test_loss_falls_in_training(kind):
  # A one-block core at mean depth 2 keeps the looped model's compile short.
  config = tiny(kind, num_layers=1, mean_depth=2) if kind == "looped" else (
      tiny(kind))
  model = models.build_model(config, rngs=nnx.Rngs(2))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  tokens, targets = toy_task()

  def loss_fn(model, key):
    if kind == "looped":   # trains with a sampled depth per sequence
      return model(tokens, targets=targets, train=True, key=key).loss
    return model(tokens, targets=targets).loss

  @nnx.jit
  def step(model, optimizer, key):
    loss, grads = nnx.value_and_grad(loss_fn)(model, key)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, jax.random.key(i)))
            for i in range(15)]
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.heavy
def test_looped_depths_vary_per_sequence_and_are_reproducible():
  model = looped_model()
  depths = model.sample_depths(jax.random.key(0), 16)
  assert depths.dtype == jnp.int32
  assert len(np.unique(depths)) > 1
  assert depths.min() >= 1 and depths.max() <= 2 * model.config.mean_depth
  np.testing.assert_array_equal(
      depths, model.sample_depths(jax.random.key(0), 16))
  # Training with a key runs the depths that key samples.
  tokens = random_tokens()
  key = jax.random.key(1)
  np.testing.assert_allclose(
      forward(model, tokens, train=True, key=key).logits,
      forward(model, tokens, train=True,
              depths=model.sample_depths(key, BATCH)).logits, atol=1e-6)
  with pytest.raises(ValueError, match="needs a key"):
    model(tokens, train=True)


@pytest.mark.heavy
def test_looped_evaluation_depth_and_per_sequence_freeze():
  model = looped_model(3)
  tokens = random_tokens(3)
  first = forward(model, tokens).logits
  np.testing.assert_array_equal(forward(model, tokens).logits, first)
  # Training frozen at each sequence's depth matches evaluation at it (and
  # evaluation runs T = mean_depth by default).
  depth = model.config.mean_depth
  one = forward(model, tokens, max_iter=1).logits
  frozen = forward(model, tokens, train=True,
                   depths=jnp.array([depth, 1])).logits
  np.testing.assert_allclose(frozen[0], first[0], atol=1e-5)
  np.testing.assert_allclose(frozen[1], one[1], atol=1e-5)
  assert np.abs(first - one).max() > 1e-4
  # T = 0: the coda decodes the zero state.
  positions = lm_common.default_positions(tokens)
  expected = model.decode(jnp.zeros((BATCH, SEQ, model.config.dim)),
                          positions=positions)
  np.testing.assert_allclose(forward(model, tokens, max_iter=0).logits,
                             expected, atol=1e-6)


def reference_truncated_loss(model, tokens, depths, keep):
  """Each sequence alone, with stop_gradient before its last `keep` steps."""
  losses = []
  for j, depth in enumerate(depths):
    tok = tokens[j:j + 1]
    positions = lm_common.default_positions(tok)
    e = model.encode(tok, positions=positions)
    h = jnp.zeros_like(e)
    for i in range(depth):
      if i == depth - keep:
        h = jax.lax.stop_gradient(h)
      h = model.step(h, e, positions=positions)
    losses.append(lm_common.cross_entropy(
        model.decode(h, positions=positions), tok, -100))
  return jnp.mean(jnp.stack(losses))


def param_grads(model, loss_fn):
  return nnx.state(nnx.grad(loss_fn)(model), nnx.Param)


@pytest.mark.heavy
def test_looped_truncated_backprop_per_sequence():
  # One backprop step: sequence 0 (depth 1) gets its full gradient, sequence
  # 1 (depth 2) only that of its last step.
  tokens = random_tokens(5)
  depths = (1, 2)

  def model_loss(model):
    return model(tokens, targets=tokens, train=True,
                 depths=jnp.array(depths)).loss

  @nnx.jit   # one compilation for the three gradients
  def gradients(truncated_model, full_model):
    return (param_grads(truncated_model, model_loss),
            param_grads(truncated_model, lambda m: reference_truncated_loss(
                m, tokens, depths, 1)),
            param_grads(full_model, model_loss))

  truncated, reference, full = gradients(
      looped_model(5, mean_depth=1, backprop_depth=1),
      looped_model(5, mean_depth=1, backprop_depth=2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-6, rtol=1e-4), truncated, reference)
  # Full backprop through both steps gives different gradients.
  difference = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                            truncated, full)
  assert max(jax.tree.leaves(difference)) > 1e-4
  # Inside the window the injection b * e still reaches the embedding.
  assert float(jnp.abs(truncated["embed"]["embedding"][...]).max()) > 0


@pytest.mark.heavy
def test_deq_converges_from_a_zero_start_and_is_untied():
  model = DEQ(tiny("deq", out_init_scale=1.0,
                   solve=SolveConfig(max_iter=32, tol=1e-3)),
              rngs=nnx.Rngs(6))
  assert not model.config.tie_embeddings      # the DEQ's default
  assert model.unembed.output is not None
  tokens = random_tokens(6)

  @nnx.jit
  def run(model, tokens):
    positions = lm_common.default_positions(tokens)
    e = model.embed(tokens)
    z, stats = model.solve(e, positions=positions)
    fz = model.map(z, e, positions=positions)
    return z, fz, stats, model(tokens, max_iter=0)

  z, fz, stats, zero = run(model, tokens)
  assert bool(jnp.all(stats.converged))
  assert bool(jnp.all(stats.iterations > 1))
  assert float(stats.residual.max()) < 1e-3
  np.testing.assert_allclose(fz, z, atol=1e-2 * float(jnp.abs(z).max()))
  # max_iter=0 returns the zero start, whose RMS-normalised logits are 0.
  np.testing.assert_array_equal(zero.logits, 0.0)
  np.testing.assert_array_equal(zero.stats.iterations, 0)


@pytest.mark.heavy
def test_deq_with_tied_unembedding_reads_the_embedding():
  config = tiny("deq", out_init_scale=1.0, tie_embeddings=True)
  model = DEQ(config, rngs=nnx.Rngs(6))
  assert model.unembed.output is None
  untied = DEQ(config.replace(tie_embeddings=False), rngs=nnx.Rngs(6))
  count = lambda m: sum(x.size for x in jax.tree.leaves(
      nnx.state(m, nnx.Param)))
  assert count(untied) - count(model) == config.vocab_size * config.dim
  tokens = random_tokens(6)

  @nnx.jit
  def run(model, tokens):
    positions = lm_common.default_positions(tokens)
    z, _ = model.solve(model.embed(tokens), positions=positions)
    return model(tokens).logits, model.unembed.norm(z)

  logits, normed = run(model, tokens)
  # logits = RMSNorm(z*) E^T: the unembedding is the embedding.
  np.testing.assert_allclose(
      logits, normed @ model.embed.embedding[...].T, atol=1e-4)
