"""SolveConfig: every fixed_point option, fixed_point's defaults, per-solver
options that never stand in for another solver's, presets and saved configs
unchanged."""

import dataclasses
import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax import solvers
from attractor_jax.models import config as config_lib
from attractor_jax.models import presets
from attractor_jax.models.reasoning import config as reasoning_config
from attractor_jax.nn import attractor_head
from attractor_jax.nn.attractor_head import SolveConfig

# The fields a saved config.json held before SolveConfig had every option.
OLD_FIELDS = ("solver", "history", "mixing", "max_iter", "min_iter", "tol",
              "backward", "backward_solver", "backward_max_iter",
              "backward_tol", "onestep_clip", "phantom_steps",
              "phantom_damping", "on_backward_failure")


def fixed_point_defaults():
  return {name: p.default
          for name, p in attractor_head.fixed_point_keywords().items()}


def test_every_fixed_point_keyword_is_a_field_with_the_same_default():
  fields = {f.name: f.default for f in dataclasses.fields(SolveConfig)}
  defaults = fixed_point_defaults()
  assert set(defaults) <= set(fields), sorted(set(defaults) - set(fields))
  for name, default in defaults.items():
    assert fields[name] == default, (name, fields[name], default)
  assert SolveConfig().fixed_point_kwargs() == dict(
      defaults, **dataclasses.asdict(solvers.Anderson()))


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
def test_every_solver_option_is_a_field_with_the_solvers_default(name):
  options = attractor_head.SOLVER_OPTIONS[name]
  solver_fields = dataclasses.asdict(solvers.SOLVERS[name]())
  assert sorted(options.values()) == sorted(solver_fields)
  config = SolveConfig(solver=name)
  for field, argument in options.items():
    assert getattr(config, field) == solver_fields[argument]
  kwargs = config.fixed_point_kwargs()
  solver = solvers.make_solver(name, **{a: kwargs[a] for a in solver_fields})
  assert solver == solvers.SOLVERS[name]()


def test_mixing_never_becomes_picards_damping():
  with pytest.raises(errors.ConfigError, match="solve.damping"):
    SolveConfig(solver="picard", mixing=0.5)
  kwargs = SolveConfig(solver="picard", damping=0.5).fixed_point_kwargs()
  assert kwargs["damping"] == 0.5 and "mixing" not in kwargs
  with pytest.raises(errors.ConfigError, match="anderson"):
    SolveConfig(solver="anderson", damping=0.5)
  kwargs = SolveConfig(solver="broyden", broyden_history=3,
                       min_denominator=1e-6).fixed_point_kwargs()
  assert kwargs["history"] == 3 and kwargs["min_denominator"] == 1e-6
  # Switching the solver of a preset (history 5, mixing 1: the defaults).
  solve = presets.get_preset("attractor-140m").solve
  assert dataclasses.replace(solve, solver="picard").fixed_point_kwargs()[
      "damping"] == 1.0


def test_solver_objects_and_every_option_reach_the_solve():
  anderson = solvers.Anderson(history=2, ridge=1e-3)
  config = SolveConfig(solver=anderson, backward_solver=solvers.Picard(0.5),
                       max_iter=6, tol=1e-5, trace=True, atol=1e-7,
                       divergence_factor=None, track_best=False)
  kwargs = config.fixed_point_kwargs()
  assert kwargs["solver"] is anderson
  assert kwargs["backward_solver"] == solvers.Picard(0.5)
  assert "history" not in kwargs
  hash(config)                       # static in nnx graphs and Linen modules
  with pytest.raises(errors.ConfigError, match="on the object"):
    SolveConfig(solver=anderson, mixing=0.5)
  with pytest.raises(errors.ConfigError, match="solver object"):
    SolveConfig(solver=dict(history=5))
  head = attractor_head.AttractorHead.create(
      dim=4, mlp_dim=8, causal=False, attention=False, solve_config=config,
      rngs=nnx.Rngs(0))
  c = jax.random.normal(jax.random.key(0), (2, 4))
  _, stats = nnx.jit(lambda head, c: head(c))(head, c)
  assert stats.trace.shape == (6 + 1, 2)          # [max_iter + 1, batch]
  assert np.all(np.asarray(stats.iterations) > 0)


# (max_iter, min_iter, tol, backward, mixing) of each solve, as before
# SolveConfig's defaults became fixed_point's.
EXPECTED = {
    "attractor-140m": (64, 6, 3e-4, "onestep", 1.0),
    "attractor-370m": (64, 8, 2e-4, "onestep", 1.0),
    "attractor-770m": (32, 6, 1.5e-4, "implicit", 0.96),
    "attractor-790m": (64, 8, 1e-4, "onestep", 1.0),
    "attractor-tiny": (16, 0, 1e-3, "onestep", 1.0),
    "deq-tiny": (16, 0, 1e-3, "onestep", 1.0),
    "ModelConfig()": (32, 0, 1e-3, "onestep", 1.0),
    "reasoner": (18, 0, 1e-3, "phantom", 1.0),
}


def lm_solves():
  solves = {name: presets.get_preset(name).solve for name in EXPECTED
            if name in presets.list_presets()}
  solves["ModelConfig()"] = config_lib.ModelConfig().solve
  solves["reasoner"] = reasoning_config.REASONER_SOLVE
  return solves


def test_lm_solve_settings_are_unchanged():
  solves = lm_solves()
  assert set(solves) == set(EXPECTED)
  for name, solve in solves.items():
    max_iter, min_iter, tol, backward, mixing = EXPECTED[name]
    expected = dict(fixed_point_defaults(),
                    **dataclasses.asdict(solvers.Anderson(mixing=mixing)))
    expected.update(max_iter=max_iter, min_iter=min_iter, tol=tol,
                    backward=backward)
    assert solve.fixed_point_kwargs() == expected, name


def old_saved_solve(**changes):
  """A `solve` dict as config.json held it before the new fields."""
  values = dict(solver="anderson", history=5, mixing=1.0, max_iter=32,
                min_iter=0, tol=1e-3, backward="onestep",
                backward_solver="anderson", backward_max_iter=None,
                backward_tol=None, onestep_clip=None, phantom_steps=2,
                phantom_damping=1.0, on_backward_failure="warn")
  assert tuple(values) == OLD_FIELDS
  values.update(changes)
  return values


def test_saved_configs_without_the_new_fields_load_unchanged():
  saved = config_lib.config_to_dict(config_lib.ModelConfig(kind="deq"))
  saved["solve"] = old_saved_solve()
  loaded = config_lib.config_from_dict(saved)
  assert loaded.solve == config_lib.ModelConfig().solve
  # Before: Picard's damping was `mixing`; Broyden got neither option.
  saved["solve"] = old_saved_solve(solver="picard", mixing=0.5)
  kwargs = config_lib.config_from_dict(saved).solve.fixed_point_kwargs()
  assert kwargs["damping"] == 0.5 and "mixing" not in kwargs
  saved["solve"] = old_saved_solve(solver="broyden", history=5, mixing=0.7)
  kwargs = config_lib.config_from_dict(saved).solve.fixed_point_kwargs()
  assert kwargs["history"] == solvers.Broyden().history
  # A config saved today round-trips.
  config = config_lib.ModelConfig(
      kind="deq", solve=SolveConfig(solver="picard", damping=0.3, atol=1e-6))
  assert config_lib.config_from_dict(
      config_lib.config_to_dict(config)) == config
  with pytest.raises(errors.ConfigError, match="Unknown solve field"):
    config_lib.config_from_dict(dict(saved, solve=dict(newton_steps=3)))


def test_public_fpi_config_converts_to_undamped_picard():
  from attractor_jax.models import torch_import  # pylint: disable=g-import-not-at-top
  public = dict(torch_import.PUBLIC_PRESETS["attractor-small-140m"],
                solver="fpi", anderson_beta=0.9)
  solve = torch_import.config_from_public(public).solve
  # The public fpi is plain iteration: anderson_beta is not its damping.
  assert solve.solver == "picard"
  assert solve.fixed_point_kwargs()["damping"] == 1.0


def test_throw_and_batched_reach_fixed_point():
  keywords = attractor_head.fixed_point_keywords()
  if "throw" not in keywords or "batched" not in keywords:
    pytest.skip("this fixed_point has no throw / batched options")
  fixed_point_lib = importlib.import_module("attractor_jax.solvers.fixed_point")

  def head(**options):
    return attractor_head.AttractorHead.create(
        dim=4, mlp_dim=8, causal=False, attention=False,
        solve_config=SolveConfig(solver="picard", **options), rngs=nnx.Rngs(0))

  c = jax.random.normal(jax.random.key(0), (2, 4))
  with pytest.raises(fixed_point_lib.FixedPointNotConverged):
    head(max_iter=1, tol=1e-9, throw=True)(c)          # outside of jit
  _, stats = nnx.jit(lambda head, c: head(c))(head(batched=False), c)
  assert stats.iterations.shape == ()                  # one example
  with pytest.raises(errors.ConfigError, match="solve.batched"):
    SolveConfig(batched="yes")
