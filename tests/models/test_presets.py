"""The preset registry: every preset's parameter count, lookups and errors."""

import dataclasses
import functools
import math

import jax.numpy as jnp
import pytest
from flax import nnx

from attractor_jax import models
from attractor_jax.models import presets
from attractor_jax.models import torch_import


@functools.cache
def count_params(name: str) -> int:
  """Parameters of a preset's model, from shapes only (nothing allocated)."""
  return models.parameter_count(presets.get_preset(name))


def formula(config) -> int:
  """The parameter count of a config, written out independently of the code."""
  d, v = config.dim, config.vocab_size
  block = 4 * d * d + 2 * d * config.mlp_dim + 2 * d        # attn, MLP, norms
  block += 2 * (d // config.num_heads) if config.qk_norm else 0
  final_norm = d
  if config.kind == "attractor":
    blocks = config.num_layers + config.head_layers
    extra = config.head_layers * 2 * d                     # two gates a block
  elif config.kind == "gpt":
    blocks, extra = config.num_layers, 0
  elif config.kind == "looped":
    blocks = config.prelude_layers + config.num_layers + config.coda_layers
    extra = 2 * d                                          # decay a, scale b
  else:                                     # deq: gated core
    blocks, extra = config.num_layers, config.num_layers * 2 * d
  untied = 0 if config.tie_embeddings else v * d
  return v * d + blocks * block + extra + final_norm + untied


# Counted sizes, rounded to the million (the tiny ones to the thousand).
EXPECTED = {
    "attractor-140m": 134e6, "attractor-370m": 376e6, "attractor-770m": 770e6,
    "attractor-790m": 787e6, "gpt-140m": 134e6, "gpt-370m": 376e6,
    "gpt-770m": 769e6, "looped-140m": 134e6, "looped-370m": 376e6,
    "looped-770m": 770e6, "attractor-tiny": 165e3, "gpt-tiny": 164e3,
    "looped-tiny": 165e3, "deq-tiny": 132e3,
}


def test_every_preset_is_expected():
  assert set(presets.list_presets()) == set(EXPECTED)


@pytest.mark.heavy
@pytest.mark.parametrize("name", presets.list_presets())
def test_parameter_count_matches_stated_size(name):
  count = count_params(name)
  assert count == formula(presets.get_preset(name))
  assert count == pytest.approx(EXPECTED[name], rel=5e-3)
  assert count == pytest.approx(presets.stated_params(name), rel=0.05)


def test_the_public_1_3b_shape_has_0_79b_parameters():
  count = count_params("attractor-790m")
  assert 0.78e9 < count < 0.80e9
  assert abs(count - 1.3e9) > 0.4e9
  config = presets.get_preset("attractor-790m")
  assert (config.dim, config.num_heads, config.mlp_dim) == (1536, 12, 6144)
  assert (config.num_layers, config.head_layers) == (23, 3)


@pytest.mark.parametrize("size", ("140m", "370m", "770m"))
def test_baselines_match_the_attractor_in_size(size):
  attractor = count_params(f"attractor-{size}")
  for kind in ("gpt", "looped"):
    assert count_params(f"{kind}-{size}") == pytest.approx(attractor, rel=1e-4)


def test_public_shapes_and_solver_settings():
  shapes = {  # dim, heads, mlp, backbone, head, max_iter, min_iter, tol
      "attractor-140m": (1024, 8, 4096, 7, 1, 64, 6, 3e-4),
      "attractor-370m": (1280, 10, 5120, 15, 2, 64, 8, 2e-4),
      "attractor-770m": (1280, 10, 5120, 35, 2, 32, 6, 1.5e-4),
  }
  for name, shape in shapes.items():
    c = presets.get_preset(name)
    s = c.solve
    assert (c.dim, c.num_heads, c.mlp_dim, c.num_layers, c.head_layers,
            s.max_iter, s.min_iter, s.tol) == shape
    assert (c.vocab_size, c.mlp, c.qk_norm, c.rope_theta, c.norm_eps,
            c.tie_embeddings) == (32768, "relu2", True, 50000.0, 1e-5, True)
    assert s.solver == "anderson" and s.history == 5
  big = presets.get_preset("attractor-770m").solve
  assert (big.mixing, big.backward) == (0.96, "implicit")
  for name in ("attractor-140m", "attractor-370m", "attractor-790m"):
    assert presets.get_preset(name).solve.backward == "onestep"
  looped = presets.get_preset("looped-140m")
  assert (looped.prelude_layers, looped.num_layers, looped.coda_layers) == (
      2, 4, 2)


def test_unknown_name_lists_presets_and_suggests():
  with pytest.raises(ValueError, match="Did you mean 'attractor-140m'") as e:
    presets.get_preset("atractor-140m")
  for name in presets.list_presets():
    assert name in str(e.value)
  with pytest.raises(ValueError, match="Known presets"):
    presets.get_preset("resnet-50")


def test_public_1_3b_name_points_to_790m():
  for name in ("attractor-1.3b", "Attractor-1.3B"):
    with pytest.raises(ValueError, match="attractor-790m"):
      presets.get_preset(name)
  assert presets.get_preset("ATTRACTOR-TINY") == presets.get_preset(
      "attractor-tiny")


@pytest.mark.parametrize("name", [n for n in presets.list_presets()
                                  if n.endswith("-tiny")])
def test_tiny_presets_trace_a_forward_pass(name):
  # Shapes only: running the models is their own tests' business.
  def forward():
    model = models.build_model(presets.get_preset(name), rngs=nnx.Rngs(0))
    tokens = jnp.zeros((2, 16), jnp.int32)
    return model(tokens, targets=tokens)

  out = nnx.eval_shape(forward)
  assert out.logits.shape == (2, 16, 256) and out.loss.shape == ()


def _flat(config) -> dict:
  values = dataclasses.asdict(config)
  solve = values.pop("solve")
  values.update({f"solve.{key}": value for key, value in solve.items()})
  return values


@pytest.mark.parametrize("public_name", sorted(presets.public_counterparts()))
def test_public_presets_agree_with_the_registry_field_by_field(public_name):
  """torch_import's public presets are derived from this registry; importing
  one gives our preset back except where the public model differs on
  purpose (its gates, its QK-norm epsilon) or by the import's mappings."""
  ours = presets.get_preset(presets.public_counterparts()[public_name])
  public = torch_import.PUBLIC_PRESETS[public_name]
  imported = _flat(torch_import.config_from_public(public))
  registry = _flat(ours)
  solve = ours.solve
  expected_differences = {
      # Exact weights load interleaved; "half" is the same up to a
      # permutation of q/k dims (torch_import's docstring).
      "rope_convention": ("interleaved", "half"),
      "qk_norm_eps": (torch_import.PUBLIC_QK_NORM_EPS, None),
      # Public gates; our presets keep our own (gate_max 1, gate_init 0.1).
      "gate_max": (public["gamma_max"], 1.0),
      "gate_init": (min(public["layer_scale_init"],
                        public["gamma_max"] * (1 - 1e-6)), 0.1),
      # Public min_iter counts evaluations of f (solver-step mapping).
      "solve.min_iter": (max(solve.min_iter - 1, 2), solve.min_iter),
      # Explicit in the public config, defaults (the same values) here.
      "solve.backward_max_iter": (solve.max_iter, None),
      "solve.backward_tol": (solve.tol, None),
      # Used only by the one-step backward / the implicit one respectively.
      "solve.onestep_clip": (public["adjoint_grad_clip"], None),
      "solve.backward_solver": (
          "anderson" if solve.backward == "implicit" else "picard",
          solve.backward_solver),
  }
  def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
      return math.isclose(a, b, rel_tol=1e-9)
    return a == b

  for key in registry:
    want = expected_differences.get(key, (registry[key], registry[key]))
    got = (imported[key], registry[key])
    assert same(got[0], want[0]) and same(got[1], want[1]), (key, got, want)
