"""Puzzle models: TRM, the Attractor reasoner and the Transformer baseline.

Shapes, non-causality, the segment carry, gradients (and TRM's gradient-free
cycles), the solve and its warm start, the Jacobian penalty, backward modes,
overfitting toy puzzles, config errors, the registry and preset sizes.
"""

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax.models import reasoning
from attractor_jax.models.reasoning import presets

VOCAB, SEQ, BATCH = 6, 16, 3
KINDS = ("trm", "attractor_reasoner", "transformer_reasoner")
SOLVE = dataclasses.replace(reasoning.config.REASONER_SOLVE, max_iter=30)
# One shape for (nearly) every test, so the jitted functions below compile
# once per kind and are reused.
SHAPE = dict(vocab_size=VOCAB, seq_len=SEQ, dim=32, num_heads=2, mlp_dim=64,
             num_layers=1, num_puzzle_ids=4, puzzle_emb_len=2,
             max_segments=4)
KIND_FIELDS = {
    "trm": dict(h_cycles=2, l_cycles=2),
    "attractor_reasoner": dict(solve=SOLVE),
    "transformer_reasoner": dict(max_segments=1),
}
IDS = jnp.array([1, 2, 3])


def tiny_config(kind, **changes):
  fields = dict(SHAPE, **KIND_FIELDS[kind])
  fields.update(changes)
  return reasoning.get_config_class(kind)(**fields)


def build(kind, seed=0, **changes):
  return reasoning.build(tiny_config(kind, **changes), nnx.Rngs(seed))


def puzzles(seed=0, batch=BATCH):
  key = jax.random.PRNGKey(seed)
  return jax.random.randint(key, (batch, SEQ), 0, VOCAB)


@functools.partial(nnx.jit, static_argnames=("train",))
def run_segment(model, inputs, carry, puzzle_ids=None, train=False):
  return model(inputs, carry, puzzle_ids=puzzle_ids, train=train)


def segment_loss(model, inputs, targets, carry, puzzle_ids=None):
  """Cross-entropy, halting BCE on "exactly right", and the aux loss."""
  new_carry, out = model(inputs, carry, puzzle_ids=puzzle_ids, train=True)
  loss = optax.softmax_cross_entropy_with_integer_labels(
      out.logits, targets).mean()
  if model.config.supports(reasoning.HALTING):
    exact = jnp.all(jnp.argmax(out.logits, -1) == targets, axis=-1)
    loss += optax.sigmoid_binary_cross_entropy(
        out.q_halt, exact.astype(jnp.float32)).mean()
  return loss + out.aux_loss, (new_carry, out)


@nnx.jit
def gradients(model, inputs, targets, carry, puzzle_ids=None):
  """(parameter grads, carry grads, new carry, outputs) of one segment."""
  grad_fn = nnx.grad(segment_loss, argnums=(0, 3), has_aux=True)
  (grads, carry_grads), (new_carry, out) = grad_fn(
      model, inputs, targets, carry, puzzle_ids)
  return grads, carry_grads, new_carry, out


def leaves_with_paths(state):
  return [(jax.tree_util.keystr(path), leaf) for path, leaf in
          jax.tree_util.tree_flatten_with_path(state)[0]]


def flat(tree):
  return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])


@pytest.mark.heavy
@pytest.mark.parametrize("kind", KINDS)
def test_segment_shapes_and_dtypes(kind):
  model = build(kind)
  carry = model.initial_carry(BATCH)
  new_carry, out = run_segment(model, puzzles(), carry)
  assert out.logits.shape == (BATCH, SEQ, VOCAB)
  assert out.logits.dtype == jnp.float32
  assert out.q_halt.shape == (BATCH,) and out.q_halt.dtype == jnp.float32
  assert out.aux_loss.shape == () and float(out.aux_loss) == 0.0  # eval
  assert bool(jnp.all(jnp.isfinite(out.logits)))
  assert jax.tree.structure(new_carry) == jax.tree.structure(carry)
  if kind == "transformer_reasoner":
    assert carry == () and out.stats is None
    assert model.config.max_segments == 1
    assert bool(jnp.all(jax.nn.sigmoid(out.q_halt) > 0.99))   # halt at once
  else:
    assert carry.y.shape == carry.z.shape == (BATCH, SEQ + 2, 32)
    assert model.config.max_segments == 4
    # TRM's halting head starts at -5: nothing halts early.
    np.testing.assert_allclose(out.q_halt, -5.0)
  assert (out.stats is not None) == (kind == "attractor_reasoner")
  if out.stats is not None:      # the latent map contracts at init
    assert bool(jnp.all(out.stats.converged)), out.stats


@pytest.mark.parametrize("kind", KINDS)
def test_attention_is_not_causal(kind):
  model = build(kind)
  inputs = puzzles()
  changed = inputs.at[:, -1].set((inputs[:, -1] + 1) % VOCAB)
  carry = model.initial_carry(BATCH)
  _, before = run_segment(model, inputs, carry)
  _, after = run_segment(model, changed, carry)
  first_cell_change = jnp.abs(before.logits[:, 0] - after.logits[:, 0])
  assert bool(jnp.all(jnp.max(first_cell_change, axis=-1) > 1e-4))


@pytest.mark.heavy
@pytest.mark.parametrize("kind", ("trm", "attractor_reasoner"))
def test_carry_moves_and_a_second_segment_differs(kind):
  model = build(kind)
  inputs = puzzles()
  carry0 = model.initial_carry(BATCH)
  carry1, first = run_segment(model, inputs, carry0)
  carry2, second = run_segment(model, inputs, reasoning.detach(carry1))
  for a, b in ((carry0, carry1), (carry1, carry2)):
    assert float(jnp.max(jnp.abs(a.y - b.y))) > 1e-3
    assert float(jnp.max(jnp.abs(a.z - b.z))) > 1e-3
  assert float(jnp.max(jnp.abs(first.logits - second.logits))) > 1e-3
  # reset_carry restarts only the flagged examples.
  reset = model.reset_carry(carry2, jnp.array([True, False, True]))
  np.testing.assert_array_equal(reset.y[0], carry0.y[0])
  np.testing.assert_array_equal(reset.z[1], carry2.z[1])


@pytest.mark.heavy
@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_that_should_learn_gets_a_finite_gradient(kind):
  model = build(kind)
  inputs, targets = puzzles(0), puzzles(1)
  grads, carry_grads, _, out = gradients(model, inputs, targets,
                                         model.initial_carry(BATCH), IDS)
  named = leaves_with_paths(grads)
  for name, grad in named:
    assert bool(jnp.all(jnp.isfinite(grad))), name
    assert float(jnp.max(jnp.abs(grad))) > 0, f"{name} gets no gradient"
  names = " ".join(name for name, _ in named)
  for part in ("embed", "puzzles", "net", "output"):
    assert part in names
  assert ("halt" in names) == (kind != "transformer_reasoner")
  # The fixed initial latents are not parameters.
  assert "y_init" not in names and "z_init" not in names
  # Only the puzzle ids in the batch learn their embedding.
  puzzle_grad = grads["embed"]["puzzles"][...]
  assert not np.any(np.asarray(puzzle_grad[0]))
  assert np.all(np.any(np.asarray(puzzle_grad[1:]) != 0, axis=1))
  if kind == "trm":
    # H = 2: the first cycle runs without gradient, so nothing reaches the
    # incoming carry.
    assert not np.any(np.asarray(flat(carry_grads)))
  if kind == "attractor_reasoner":
    # In training the Jacobian penalty (weight 0.1) is part of the loss.
    assert float(out.aux_loss) > 0


@pytest.mark.slow
def test_trm_differentiates_only_its_last_cycle():
  """H = 2 gives the gradient of one cycle run from the first one's result."""
  inputs, targets = puzzles(0), puzzles(1)
  model2 = build("trm")
  model1 = build("trm", h_cycles=1)
  nnx.update(model1, nnx.state(model2))
  carry0 = model2.initial_carry(BATCH)
  grads2, carry_grads2, _, _ = gradients(model2, inputs, targets, carry0)
  # One cycle from carry0 (its gradients unused), then one more: its
  # gradients are those of model2's second cycle.
  _, carry_grads1, after_one, _ = gradients(model1, inputs, targets, carry0)
  grads1, _, _, _ = gradients(model1, inputs, targets, after_one)
  for (name, g2), (_, g1) in zip(leaves_with_paths(grads2),
                                 leaves_with_paths(grads1)):
    np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-6, err_msg=name)
  # Nothing reaches the incoming carry through the gradient-free cycle; with
  # H = 1 the carry is differentiated (so the caller must detach it).
  assert not np.any(np.asarray(flat(carry_grads2)))
  assert np.any(np.asarray(flat(carry_grads1)))


@pytest.mark.slow
def test_reasoner_solve_converges_and_warm_starts_save_iterations():
  inputs = puzzles(0)
  warm = build("attractor_reasoner")
  cold = build("attractor_reasoner", warm_start=False)
  carry0 = warm.initial_carry(BATCH)
  carry1, first = run_segment(warm, inputs, carry0)
  assert bool(jnp.all(first.stats.converged)), first.stats
  assert float(jnp.max(first.stats.residual)) <= SOLVE.tol
  # z* is a fixed point of F(z) = net(z + y + x), within the tolerance.
  net, params = warm.net.functional()
  x = warm.embed(inputs, None)
  z_star = carry1.z
  residual = net(params, z_star + carry0.y + x) - z_star
  relative = (jnp.linalg.norm(residual.reshape(BATCH, -1), axis=1)
              / jnp.linalg.norm(z_star.reshape(BATCH, -1), axis=1))
  assert float(jnp.max(relative)) < 2 * SOLVE.tol
  # The second segment: from the carried z, or from the initial z.
  _, warm_second = run_segment(warm, inputs, carry1)
  _, cold_second = run_segment(cold, inputs, carry1)
  assert bool(jnp.all(warm_second.stats.converged))
  assert bool(jnp.all(cold_second.stats.converged))
  assert (int(jnp.sum(warm_second.stats.iterations))
          < int(jnp.sum(cold_second.stats.iterations))), (
              warm_second.stats.iterations, cold_second.stats.iterations)


@pytest.mark.heavy
def test_reasoner_depth_zero_keeps_the_start_and_depth_is_swept():
  model = build("attractor_reasoner")
  carry0 = model.initial_carry(BATCH)
  carry, out = model(puzzles(), carry0, depth=0)
  np.testing.assert_array_equal(carry.z, carry0.z)
  assert int(jnp.max(out.stats.iterations)) == 0
  assert model.config.sweep_depth == SOLVE.max_iter
  assert build("trm").config.sweep_depth == 2
  with pytest.raises(ValueError, match="fixed depth"):
    build("transformer_reasoner")(puzzles(), (), depth=1)


def penalty(model, inputs, carry):
  return model(inputs, carry, train=True)[1].aux_loss


@pytest.mark.slow
def test_jacobian_penalty_is_positive_differentiable_and_weighted():
  inputs = puzzles(0)
  model = build("attractor_reasoner")
  assert model.config.jacobian_penalty_weight == 0.1
  carry = model.initial_carry(BATCH)
  value, grads = nnx.jit(nnx.value_and_grad(penalty))(model, inputs, carry)
  assert float(value) > 0
  assert bool(jnp.all(jnp.isfinite(flat(grads))))
  assert float(jnp.linalg.norm(flat(grads.net))) > 0
  assert float(jnp.linalg.norm(flat(grads.embed))) > 0     # through c = x + y
  # Evaluation leaves it out, and weight 0 turns it off.
  assert float(run_segment(model, inputs, carry)[1].aux_loss) == 0.0
  off = build("attractor_reasoner", jacobian_penalty_weight=0.0)
  assert float(run_segment(off, inputs, carry, train=True)[1].aux_loss) == 0.0


@pytest.mark.slow
def test_training_on_the_jacobian_penalty_makes_the_map_contract():
  inputs = puzzles(0)
  model = build("attractor_reasoner", jacobian_penalty_weight=1.0)
  carry = model.initial_carry(BATCH)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    value, grads = nnx.value_and_grad(penalty)(model, inputs, carry)
    optimizer.update(model, grads)
    return value

  values = [float(step(model, optimizer)) for _ in range(20)]
  assert np.mean(values[-5:]) < 0.8 * np.mean(values[:5]), values


@pytest.mark.slow
def test_the_7m_reasoner_contracts_at_init_where_trms_init_does_not():
  """out_init_scale 0.25 (the reasoner's default) against TRM's 1."""
  config = presets.get_preset("attractor-reasoner-7m")
  inputs = jax.random.randint(jax.random.PRNGKey(0), (1, 81), 1, 11)
  converged = {}
  for scale in (0.25, 1.0):
    model = reasoning.build(config.replace(out_init_scale=scale),
                            nnx.Rngs(0))
    _, out = run_segment(model, inputs, model.initial_carry(1))
    converged[scale] = bool(out.stats.converged[0])
  assert converged == {0.25: True, 1.0: False}


@pytest.mark.slow
def test_phantom_and_implicit_backward_give_finite_aligned_gradients():
  inputs, targets = puzzles(0), puzzles(1)
  net_grads = []
  for backward in ("phantom", "implicit"):
    # Phantom is the default (its gradients compile once for both tests);
    # Picard solves the implicit backward system (a cheaper compile).
    solve = SOLVE if backward == "phantom" else dataclasses.replace(
        SOLVE, backward=backward, backward_solver="picard")
    model = build("attractor_reasoner", solve=solve)
    grads, _, _, _ = gradients(model, inputs, targets,
                               model.initial_carry(BATCH))
    assert bool(jnp.all(jnp.isfinite(flat(grads)))), backward
    net_grads.append(flat(grads.net))
    assert float(jnp.linalg.norm(net_grads[-1])) > 0
  phantom, implicit = net_grads
  cosine = jnp.dot(phantom, implicit) / (
      jnp.linalg.norm(phantom) * jnp.linalg.norm(implicit))
  assert float(cosine) > 0.8


def test_puzzle_ids_select_embeddings_and_unseen_ids_read_as_unknown():
  model = build("trm")
  table = jax.random.normal(jax.random.PRNGKey(3), (4, 32))
  model.embed.puzzles[...] = table.at[0].set(0.0)
  inputs = jnp.tile(puzzles(0, batch=1), (BATCH, 1))
  carry = model.initial_carry(BATCH)
  _, out = run_segment(model, inputs, carry, jnp.array([0, 1, 99]))
  # Ids 0 and 1 differ; 99 (unseen) reads as 0, as does no id at all.
  assert float(jnp.max(jnp.abs(out.logits[0] - out.logits[1]))) > 1e-3
  np.testing.assert_allclose(out.logits[2], out.logits[0], atol=1e-5)
  _, default = run_segment(model, inputs, carry)
  np.testing.assert_allclose(default.logits[0], out.logits[0], atol=1e-5)


@pytest.mark.heavy
@pytest.mark.parametrize("kind", (
    pytest.param("trm", marks=pytest.mark.slow),
    pytest.param("attractor_reasoner", marks=pytest.mark.slow),
    "transformer_reasoner"))
def test_a_tiny_model_overfits_toy_puzzles_under_jit(kind):
  """Deep supervision: one segment a step, the detached carry kept.

  The recursive models see a moving carry (each segment starts where the
  last one ended), so they need more steps than the transformer, and a
  smaller learning rate than it tolerates (1e-2 stalls TRM and the
  reasoner).
  """
  inputs, targets = puzzles(10), puzzles(11)
  model = build(kind)
  # The reasoner's warm-started solve follows its weights less tightly: at
  # 3e-3 its loss stalls near 1.1, at 1e-3 it falls from 1.95 to 0.19.
  lr = 1e-3 if kind == "attractor_reasoner" else 3e-3
  optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, carry):
    (_, (carry, out)), grads = nnx.value_and_grad(
        segment_loss, has_aux=True)(model, inputs, targets, carry)
    optimizer.update(model, grads)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
        out.logits, targets).mean()
    return cross_entropy, reasoning.detach(carry)

  losses = []
  for i in range(96):
    if i % model.config.max_segments == 0:
      carry = model.initial_carry(BATCH)
    loss, carry = step(model, optimizer, carry)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  segments = model.config.max_segments
  assert np.mean(losses[-segments:]) < 0.5 * losses[0], losses


BAD_CONFIGS = [
    ("trm", dict(kind="gpt"), "kind"),
    ("trm", dict(dim=30, num_heads=4), "num_heads"),
    ("trm", dict(dim=30, num_heads=2), "even"),
    ("trm", dict(h_cycles=0), "h_cycles"),
    ("trm", dict(l_cycles=1.5), "l_cycles"),
    ("trm", dict(vocab_size=0), "vocab_size"),
    ("trm", dict(num_puzzle_ids=0), "num_puzzle_ids"),
    ("trm", dict(puzzle_emb_len=-1), "puzzle_emb_len"),
    ("trm", dict(puzzle_emb_len=1, puzzle_emb_dim=64), "does not fit"),
    ("trm", dict(max_segments=0), "max_segments"),
    ("trm", dict(dtype="float8"), "dtype"),
    ("trm", dict(rope_theta=0.0), "rope_theta"),
    ("trm", dict(init_std=-1.0), "init_std"),
    ("attractor_reasoner", dict(jacobian_penalty_weight=-0.1), "penalty"),
    ("attractor_reasoner", dict(jacobian_penalty_samples=0), "samples"),
    ("attractor_reasoner", dict(solve="anderson"), "SolveConfig"),
    ("transformer_reasoner", dict(max_segments=16), "max_segments"),
]


@pytest.mark.parametrize("kind,changes,match", BAD_CONFIGS)
def test_bad_configs_raise_config_errors(kind, changes, match):
  fields = dict(SHAPE, **KIND_FIELDS[kind])
  fields.update(changes)
  with pytest.raises(errors.ConfigError, match=match):
    reasoning.get_config_class(kind)(**fields)


def test_solver_settings_are_checked_where_they_are_set():
  with pytest.raises(errors.ConfigError, match="backward"):
    dataclasses.replace(SOLVE, backward="magic")


def test_registry_builds_each_kind_and_reports_capabilities():
  assert set(KINDS) <= set(reasoning.kinds())
  expected = {
      "trm": {reasoning.HALTING, reasoning.DEPTH_SWEEP},
      "attractor_reasoner": {reasoning.HALTING, reasoning.DEPTH_SWEEP,
                             reasoning.SOLVER_STATS},
      "transformer_reasoner": set(),
  }
  for kind in KINDS:
    config = tiny_config(kind)
    assert config.kind == kind
    assert set(config.capabilities) == expected[kind]
    model = nnx.eval_shape(lambda: reasoning.build(config, nnx.Rngs(0)))
    assert isinstance(model, reasoning.get_model_class(kind))
  assert reasoning.get_config_class("trm") is reasoning.TRMConfig
  with pytest.raises(errors.ConfigError, match="Unknown reasoning"):
    reasoning.get_config_class("hrm")
  with pytest.raises(errors.ConfigError, match="needs a TRMConfig"):
    reasoning.build(types.SimpleNamespace(kind="trm"), nnx.Rngs(0))
  with pytest.raises(ValueError, match="already registered"):
    reasoning.register("trm")(reasoning.TRMConfig,
                              reasoning.AttractorReasoner)
  with pytest.raises(ValueError, match="Unknown capability"):
    tiny_config("trm").supports("flying")


def count_params(config) -> int:
  model = nnx.eval_shape(lambda: reasoning.build(config, nnx.Rngs(0)))
  return sum(leaf.size for leaf in
             jax.tree.leaves(nnx.state(model, nnx.Param)))


def formula(config) -> int:
  """Parameters written out independently of the code."""
  d, v = config.dim, config.vocab_size
  block = 4 * d * d + 3 * d * config.mlp_dim + 2 * d   # attn, SwiGLU, norms
  halting = 0 if config.kind == "transformer_reasoner" else d + 1
  puzzle = config.num_puzzle_ids * d if config.puzzle_emb_len else 0
  return v * d + config.num_layers * block + v * d + halting + puzzle


# Counted for Sudoku (vocab 11, 81 cells, one puzzle id).
EXPECTED_PARAMS = {
    "trm-7m": 6_830_081, "trm-27m": 27_283_457,
    "attractor-reasoner-7m": 6_830_081, "attractor-reasoner-27m": 27_283_457,
    "transformer-7m": 6_829_568, "transformer-27m": 27_282_944,
    "trm-tiny": 21_377, "attractor-reasoner-tiny": 21_377,
    "transformer-tiny": 21_344,
}


def test_every_preset_is_counted():
  assert set(presets.list_presets()) == set(EXPECTED_PARAMS)


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_parameter_counts(name):
  config = presets.get_preset(name)
  count = count_params(config)
  assert count == EXPECTED_PARAMS[name] == formula(config)
  assert count == pytest.approx(presets.stated_params(name), rel=0.05)


def test_paper_presets_have_the_papers_shapes():
  for size, layers in (("7m", 2), ("27m", 8)):
    for family in ("trm", "attractor-reasoner", "transformer"):
      config = presets.get_preset(f"{family}-{size}")
      assert (config.dim, config.num_heads, config.mlp_dim) == (512, 8, 1536)
      assert config.num_layers == layers
      assert (config.vocab_size, config.seq_len) == (11, 81)
  trm = presets.get_preset("trm-7m")
  assert (trm.h_cycles, trm.l_cycles, trm.max_segments) == (3, 6, 16)
  assert (trm.puzzle_emb_len, trm.rope_theta) == (16, 10000.0)
  reasoner = presets.get_preset("attractor-reasoner-27m")
  assert reasoner.solve.backward == "phantom"
  assert reasoner.solve.phantom_steps == 2
  maze = presets.get_preset("trm-7m", puzzle="maze")
  assert (maze.vocab_size, maze.seq_len, maze.l_cycles) == (6, 900, 4)
  assert presets.get_preset("trm-tiny", puzzle="maze").l_cycles == 2
  with pytest.raises(errors.ConfigError, match="Did you mean 'trm-7m'"):
    presets.get_preset("trm-7n")
  with pytest.raises(errors.ConfigError, match="puzzle"):
    presets.get_preset("trm-7m", puzzle="arc")
