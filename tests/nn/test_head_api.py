"""The attractor head as a library layer: construction, causality, residual
branches of any shape, eager-call warning, Linen init, imports."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import attractor_jax
from attractor_jax.nn import attractor_head
from attractor_jax.nn import blocks

DIM, SEQ = 8, 6
# Picard with the one-step gradient compiles fastest; the solver is not what
# these tests are about.
SOLVE = attractor_head.SolveConfig(solver="picard", max_iter=30, tol=1e-5,
                                   backward="onestep")


def random(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def make_head(**kwargs):
  options = dict(dim=DIM, num_heads=2, mlp_dim=16, solve_config=SOLVE,
                 rngs=nnx.Rngs(0))
  options.update(kwargs)
  return attractor_head.AttractorHead.create(**options)


@nnx.jit(static_argnames="max_iter")
def solve(head, c, positions=None, max_iter=None):
  return head(c, positions=positions, max_iter=max_iter)


@nnx.jit
def apply_map(head, y, c, positions=None):
  return head.map(y, c, positions=positions)


def change_per_token(head, c, token, positions=None):
  """max |f(y; c) - f(y'; c')| at every sequence index, where y', c' differ
  from y, c at `token` only. (The solved y* is causal only up to the solver
  tolerance: when an example stops depends on its whole sequence.)"""
  y = random(c.shape, 7)
  out = apply_map(head, y, c, positions)
  changed = apply_map(head, y.at[:, token].add(1.0), c.at[:, token].add(1.0),
                      positions)
  return np.asarray(jnp.max(jnp.abs(changed - out), axis=(0, 2)))


@pytest.mark.heavy
def test_create_requires_causal_and_starts_away_from_the_constant_map():
  with pytest.raises(TypeError, match="causal"):
    attractor_head.AttractorHead.create(dim=DIM, num_heads=2, mlp_dim=16,
                                        rngs=nnx.Rngs(0))
  head = make_head(causal=False)
  assert not head.blocks[0].spec.causal
  assert np.any(np.asarray(head.blocks[0].attn.wo[...]) != 0)
  assert np.any(np.asarray(head.blocks[0].mlp.w_out[...]) != 0)
  c = random((2, SEQ, DIM))
  _, stats = solve(head, c)
  assert np.all(np.asarray(stats.iterations) > 0)     # not f = c

  def loss(head):
    return jnp.sum(head(c)[0] ** 2)

  grads = nnx.jit(nnx.grad(loss))(head)
  assert np.any(np.asarray(grads.blocks[0].attn_gate.raw[...]) != 0)
  assert np.any(np.asarray(grads.blocks[0].mlp_gate.raw[...]) != 0)
  # Non-causal: a later token changes every output.
  assert np.all(change_per_token(head, c, 4) > 0)


def test_head_from_a_zero_initialised_spec_is_refused():
  spec = blocks.BlockSpec(DIM, 2, 16, gate_max=1.0)     # out_init_scale 0
  with pytest.raises(ValueError, match="constant map"):
    attractor_head.AttractorHead(spec, 1, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("positions", ["default", "constant"])
def test_causality_never_depends_on_positions(positions):
  head = make_head(causal=True)
  c = random((1, SEQ, DIM))
  pos = None if positions == "default" else jnp.zeros((1, SEQ), jnp.int32)
  delta = change_per_token(head, c, 3, pos)
  assert np.all(delta[:3] == 0.0), delta
  assert np.all(delta[3:] > 0), delta


def test_rotary_can_be_switched_off():
  head = make_head(causal=False, rope_theta=None)
  assert head.blocks[0].attn.rope_theta is None
  c = random((2, SEQ, DIM))
  perm = np.array([3, 0, 5, 1, 4, 2])
  y, _ = solve(head, c)
  y_perm, _ = solve(head, c[:, perm])
  # Without rotary, attention over the tokens is permutation-equivariant.
  np.testing.assert_allclose(np.asarray(y_perm), np.asarray(y[:, perm]),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.heavy
@pytest.mark.parametrize("shape", [(3, DIM), (2, 3, 4, DIM)])
def test_mlp_only_head_takes_any_leading_shape(shape):
  head = make_head(causal=False, attention=False, num_heads=None)
  assert head.blocks[0].attn is None and head.blocks[0].attn_gate is None
  c = random(shape)
  y, stats = solve(head, c)
  assert y.shape == shape
  assert np.all(np.asarray(stats.converged))
  np.testing.assert_allclose(np.asarray(head.map(y, c)), np.asarray(y),
                             atol=1e-4)


class GraphStep(nnx.Module):
  """A user's residual branch: R(x) = 0.3 tanh(A x W), A given per call."""

  def __init__(self, dim, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (dim, dim)) / dim)

  def __call__(self, x, *, adjacency):
    return 0.3 * jnp.tanh(adjacency @ x @ self.w[...])


def test_user_module_as_residual_branch():
  head = attractor_head.AttractorHead(
      residual=GraphStep(DIM, nnx.Rngs(1)), solve_config=SOLVE)
  c = random((2, 5, DIM))
  adjacency = (random((2, 5, 5), 3) > 0).astype(jnp.float32) / 5

  @nnx.jit
  def loss(head, c, adjacency):
    y, stats = head(c, adjacency=adjacency)
    return jnp.sum(y ** 2), (y, stats)

  (_, (y, stats)), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(
      head, c, adjacency)
  assert np.all(np.asarray(stats.converged))
  np.testing.assert_allclose(
      np.asarray(y), np.asarray(c + 0.3 * jnp.tanh(
          adjacency @ (y + c) @ head.blocks[0].w[...])), atol=1e-4)
  assert np.any(np.asarray(grads.blocks[0].w[...]) != 0)
  with pytest.raises(ValueError, match="not both"):
    attractor_head.AttractorHead(blocks.BlockSpec(DIM, 2, 16, gate_max=1.0),
                                 residual=GraphStep(DIM, nnx.Rngs(1)))


def test_traced_max_iter_is_refused_with_the_fix():
  head = make_head(causal=False, attention=False, num_heads=None)
  c = random((2, DIM))
  with pytest.raises(TypeError, match="static_argnames"):
    nnx.jit(lambda head, c, n: head(c, max_iter=n))(head, c, 3)
  y, _ = head(c, max_iter=np.int64(0))      # a NumPy integer is fine
  np.testing.assert_array_equal(np.asarray(y), np.asarray(c))


# A head built from a BlockSpec, as before AttractorHead.create existed.
SPEC = blocks.BlockSpec(DIM, 2, 16, gate_max=1.0, out_init_scale=1.0)


def test_eager_call_warns_once_and_jitted_calls_do_not(monkeypatch):
  monkeypatch.setattr(attractor_head, "_eager_warned", False, raising=False)
  head = attractor_head.AttractorHead(
      SPEC, 1, attractor_head.SolveConfig(solver="picard", max_iter=2),
      rngs=nnx.Rngs(0))
  c = random((2, SEQ, DIM))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    solve(head, c)                       # jitted
    head(c, max_iter=0)                  # no solve
    assert not caught
    head(c)
    head(c)
  eager = [w for w in caught
           if issubclass(w.category, attractor_head.EagerSolveWarning)]
  assert len(eager) == 1
  assert "nnx.jit" in str(eager[0].message)


class LinenModel(nn.Module):
  """A user's Linen model around the head (through attractor_jax.linen)."""

  @nn.compact
  def __call__(self, x):
    from attractor_jax import linen as attractor_linen  # pylint: disable=g-import-not-at-top
    c = nn.Dense(DIM)(x)
    y, stats = attractor_linen.attractor_head(
        dim=DIM, num_heads=2, mlp_dim=16, causal=True, solve_config=SOLVE,
        name="head")(c)
    return nn.Dense(1)(y), stats


@pytest.mark.heavy
def test_linen_init_skips_the_solve_and_apply_runs_it():
  model = LinenModel()
  x = random((2, SEQ, 3))
  (_, stats), variables = jax.jit(model.init_with_output)(
      jax.random.key(0), x)
  assert int(stats.num_f_evals) == 0
  assert np.all(np.asarray(stats.iterations) == 0)
  assert "raw" in variables["params"]["head"]["blocks"][0]["attn_gate"]
  _, stats = jax.jit(model.apply)(variables, x)
  assert np.all(np.asarray(stats.iterations) > 0)


def test_linen_init_skips_the_solve_of_a_head_built_from_a_spec():
  from attractor_jax import linen as attractor_linen  # pylint: disable=g-import-not-at-top
  head = attractor_linen.attractor_head_linen(SPEC, 1, SOLVE)
  c = random((2, SEQ, DIM))
  (_, stats), variables = jax.jit(head.init_with_output)(jax.random.key(0), c)
  assert int(stats.num_f_evals) == 0
  _, stats = jax.jit(head.apply)(variables, c)
  assert int(stats.num_f_evals) > 0


def test_top_level_exports():
  from attractor_jax import AttractorHead, BlockSpec, SolveConfig, fixed_point  # pylint: disable=g-import-not-at-top,g-multiple-import
  assert AttractorHead is attractor_head.AttractorHead
  assert SolveConfig is attractor_head.SolveConfig
  assert BlockSpec is blocks.BlockSpec
  assert fixed_point is attractor_jax.solvers.fixed_point
  assert "AttractorHead" in dir(attractor_jax)
  with pytest.raises(AttributeError):
    attractor_jax.NoSuchThing  # pylint: disable=pointless-statement


@pytest.mark.heavy
def test_linen_docstring_example_runs():
  from attractor_jax import linen as attractor_linen  # pylint: disable=g-import-not-at-top
  doc = attractor_linen.__doc__
  example = doc[doc.index("    import jax"):doc.index("\nBuilt on")]
  code = "\n".join(line[4:] for line in example.splitlines())
  assert re.search(r"model\.init", code)
  namespace = {}
  exec(compile(code, "attractor_jax.linen docstring", "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["out"].shape == (4, 1)


@pytest.mark.heavy
@pytest.mark.parametrize("injection", tuple(attractor_head.INJECTIONS))
def test_each_injection_is_the_map_it_names(injection):
  head = make_head(causal=True, injection=injection)
  y, c = random((2, SEQ, DIM), 1), random((2, SEQ, DIM), 2)
  residual = lambda x: head.residual(x)
  if injection == "additive":
    expected = c + residual(y + c)
  elif injection == "init_only":
    expected = y + residual(y)
  else:
    proj = head.injection_proj[...]
    assert proj.shape == (2 * DIM, DIM)
    expected = c + residual(jnp.concatenate([y, c], -1) @ proj)
  if injection != "concat":
    assert head.injection_proj is None
  np.testing.assert_allclose(np.asarray(apply_map(head, y, c)),
                             np.asarray(expected), atol=1e-5)
  # Every injection keeps the map causal.
  changes = change_per_token(head, c, 3)
  assert np.all(changes[:3] == 0) and np.all(changes[3:] > 0)


def test_unknown_or_unsupported_injection_is_refused():
  with pytest.raises(ValueError, match="Unknown injection 'sum'.*additive"):
    make_head(causal=True, injection="sum")
  with pytest.raises(ValueError, match="concat injection needs"):
    attractor_head.AttractorHead(residual=nnx.Linear(DIM, DIM,
                                                     rngs=nnx.Rngs(0)),
                                 injection="concat")
