"""The model registry and the task seam: the trainer's step knows no kind
names and no text."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax import models
from attractor_jax.configs import lm
from attractor_jax.models import presets
from attractor_jax.models import registry
from attractor_jax.models import torch_import
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.models.config import config_from_dict
from attractor_jax.models.config import config_to_dict
from attractor_jax.models.config import DEQConfig
from attractor_jax.models.config import GPTConfig
from attractor_jax.models.config import LoopedConfig
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.tasks.lm import checks as lm_checks
from attractor_jax.tasks.lm import task as lm_task
from attractor_jax.training import optimizers
from attractor_jax.training import tasks
from attractor_jax.training import trainer


def test_every_lm_kind_says_what_it_supports():
  assert set(registry.kinds()) >= {"attractor", "gpt", "looped", "deq"}
  assert registry.supports("attractor", registry.CACHED_DECODING)
  assert registry.supports("deq", registry.SOLVER_STATS)
  assert not registry.supports("gpt", registry.DEPTH_SWEEP)
  assert not registry.supports("looped", registry.SOLVER_STATS)
  looped = ModelConfig(kind="looped", mean_depth=3)
  assert registry.sweep_depth(looped) == 6
  attractor = ModelConfig(kind="attractor")
  assert registry.sweep_depth(attractor) == attractor.solve.max_iter
  with pytest.raises(ValueError, match="fixed depth"):
    registry.sweep_depth(ModelConfig(kind="gpt"))
  assert models.model_class("gpt").__name__ == "GPT"


def test_registry_refuses_unknown_and_conflicting_entries():
  with pytest.raises(errors.ConfigError, match="Unknown model kind 'rnn'.*"
                     "attractor"):
    registry.entry("rnn")
  with pytest.raises(ValueError, match="Unknown feature"):
    registry.supports("gpt", "telepathy")
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.ModelEntry("gpt", ModelConfig, "x", "Y"))
  with pytest.raises(ValueError, match="needs sweep_depth"):
    registry.ModelEntry("z", ModelConfig, "x", "Y",
                        features={registry.DEPTH_SWEEP})


LM_CONFIG_CLASSES = {"attractor": AttractorLMConfig, "gpt": GPTConfig,
                     "looped": LoopedConfig, "deq": DEQConfig}


@pytest.mark.parametrize("kind", sorted(LM_CONFIG_CLASSES))
def test_each_lm_kind_has_its_own_registered_config_class(kind):
  cls = LM_CONFIG_CLASSES[kind]
  assert registry.entry(kind).config_class is cls
  assert issubclass(cls, ModelConfig) and cls.KIND == kind
  assert cls().kind == kind
  # The old spelling builds the registered class, equal to the new one.
  old = ModelConfig(kind=kind, dim=32, num_heads=2)
  assert type(old) is cls and old == cls(dim=32, num_heads=2)
  assert type(ModelConfig(kind)) is cls
  assert type(registry.config_for_kind(kind, dim=32, num_heads=2)) is cls
  assert registry.config_for_kind(kind, dim=32, num_heads=2) == old
  assert len(set(LM_CONFIG_CLASSES.values())) == len(LM_CONFIG_CLASSES)
  assert type(ModelConfig()) is AttractorLMConfig      # the default kind


def test_presets_are_their_kinds_registered_config_class():
  seen = set()
  for name in presets.list_presets():
    config = presets.get_preset(name)
    assert type(config) is registry.entry(config.kind).config_class, name
    seen.add(config.kind)
  assert seen == set(LM_CONFIG_CLASSES)
  # The training config's preset and overrides keep the class.
  config = lm.get_config()
  config.model.preset = "looped-tiny"
  config.model.mean_depth = 3
  model_config = lm_checks.model_config_from(config, 300)
  assert type(model_config) is LoopedConfig
  assert (model_config.mean_depth, model_config.vocab_size) == (3, 300)


@pytest.mark.parametrize("name", [n for n in presets.list_presets()
                                  if n.endswith("-tiny")])
def test_a_saved_config_loads_as_its_kinds_class(name):
  config = presets.get_preset(name)
  saved = json.loads(json.dumps(config_to_dict(config)))   # config.json
  for load in (config_from_dict, torch_import.config_from_dict):
    loaded = load(saved)
    assert type(loaded) is type(config) and loaded == config
    assert isinstance(loaded.solve, SolveConfig)
  # The saved format is the same for every kind: every field, and the kind.
  assert set(saved) == {f.name for f in dataclasses.fields(ModelConfig)}
  assert saved["kind"] == config.kind


def test_old_config_dicts_load():
  # A dict as config.json held it before the per-kind classes.
  old = config_to_dict(ModelConfig(kind="gpt", dim=32, num_heads=2))
  assert type(config_from_dict(old)) is GPTConfig
  del old["kind"]                  # no kind: the field's default, attractor
  assert type(config_from_dict(old)) is AttractorLMConfig
  with pytest.raises(errors.ConfigError, match=r"Unknown model field\(s\) "
                     r"\['width'\]; GPTConfig has"):
    config_from_dict({"kind": "gpt", "width": 3})
  with pytest.raises(errors.ConfigError, match="Unknown model.kind 'rnn'"):
    config_from_dict({"kind": "rnn"})


def test_a_config_class_refuses_another_kind():
  with pytest.raises(errors.ConfigError, match="GPTConfig is the config of "
                     "'gpt' models; got kind='looped'. Use LoopedConfig"):
    GPTConfig(kind="looped")
  with pytest.raises(errors.ConfigError, match="AttractorLMConfig is the "
                     "config of 'attractor' models; got kind='deq'"):
    dataclasses.replace(AttractorLMConfig(), kind="deq")
  with pytest.raises(errors.ConfigError, match="Unknown model.kind 'rnn'; "
                     "expected one of attractor, gpt, looped, deq"):
    ModelConfig(kind="rnn")
  with pytest.raises(errors.ConfigError, match="Unknown model.kind 'rnn'"):
    LoopedConfig(kind="rnn")
  # `replace` with another kind gives that kind's class, as before.
  deq = GPTConfig(dim=32, num_heads=2).replace(kind="deq")
  assert type(deq) is DEQConfig and deq.dim == 32
  # A registry entry's config class must be of its kind.
  with pytest.raises(ValueError, match="config class LoopedConfig is for "
                     "kind 'looped'"):
    registry.ModelEntry("gpt", LoopedConfig, "attractor_jax.models.gpt",
                        "GPT")
  # A model is built from its own kind's class only.
  with pytest.raises(errors.ConfigError, match="GPT is built from a "
                     "GPTConfig .*got LoopedConfig"):
    models.model_class("gpt")(LoopedConfig(), rngs=nnx.Rngs(0))


def test_kind_checks_belong_to_their_kind():
  with pytest.raises(errors.ConfigError, match="gate_init must lie in"):
    AttractorLMConfig(gate_init=2.0)
  with pytest.raises(errors.ConfigError, match="mean_depth must be an "
                     "integer >= 1"):
    LoopedConfig(mean_depth=0)
  with pytest.raises(errors.ConfigError, match="head_layers must be an "
                     "integer >= 1"):
    AttractorLMConfig(head_layers=0)
  with pytest.raises(errors.ConfigError, match="num_layers must be an "
                     "integer >= 1"):
    GPTConfig(num_layers=0)
  # Fields a kind does not use are not checked for it (as before).
  GPTConfig(gate_init=2.0, mean_depth=0, head_layers=0)
  AttractorLMConfig(num_layers=0)


def test_tasks_by_name():
  config = lm.get_config()
  assert isinstance(tasks.get_task(config), lm_task.LMTask)
  del config["task"]                     # a config.json from before tasks
  assert tasks.get_task(config).name == "lm"
  with pytest.raises(errors.ConfigError, match="Unknown task 'chess'"):
    tasks.get_task(config, "chess")


class Line(nnx.Module):
  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (3,)))


@dataclasses.dataclass(frozen=True)
class LineFit(tasks.Task):
  """A task with no text, no kind and no solver: fit y = x . w."""

  name: str = "line"

  def loss(self, model, batch):
    error = batch["x"] @ model.w[...] - batch["y"]
    return jnp.mean(error ** 2), error

  def solver_stats(self, aux):
    return None

  def step_scalars(self, aux):
    return {"max_error": jnp.max(jnp.abs(aux))}


def test_the_train_step_runs_any_task():
  model = Line(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optimizers.make_optimizer(
      optimizers.OptimizerConfig(name="adamw", lr=0.1, clip_norm=None)),
      wrt=nnx.Param)
  x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
  batch = {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}
  first = trainer.train_step(model, optimizer, batch, task=LineFit())
  for _ in range(150):
    last = trainer.train_step(model, optimizer, batch, task=LineFit())
  assert float(last["max_error"]) < 0.1 * float(first["max_error"])
  assert int(last["skipped_updates"]) == 0
  # A NaN target is a bad step: skipped, counted, parameters unchanged.
  before = np.asarray(model.w[...])
  bad = dict(batch, y=np.full_like(batch["y"], np.nan))
  scalars = trainer.train_step(model, optimizer, bad, task=LineFit())
  assert int(scalars["skipped_updates"]) == 1
  assert bool(scalars["health/loss_nonfinite"])
  np.testing.assert_array_equal(np.asarray(model.w[...]), before)
