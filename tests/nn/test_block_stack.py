"""Scanned (stacked) layers equal the Python loop; remat policies; layouts."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from attractor_jax import errors
from attractor_jax import models
from attractor_jax.models.config import AttractorLMConfig
from attractor_jax.models.config import GPTConfig
from attractor_jax.models.config import ModelConfig
from attractor_jax.nn import block_stack
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.parallel import mesh as mesh_lib
from attractor_jax.parallel import state as state_lib
from attractor_jax.tasks.lm import checks as lm_checks
from attractor_jax.training import checkpoints
from attractor_jax.training import metrics
from attractor_jax.training import trainer

import tiny_configs

ROOT = pathlib.Path(__file__).resolve().parents[2]
VOCAB = 64
SMALL = dict(vocab_size=VOCAB, dim=16, num_heads=2, mlp_dim=32, num_layers=3,
             out_init_scale=1.0)
CONFIGS = {
    "attractor": AttractorLMConfig(
        **SMALL, head_layers=1, gate_init=0.2,
        solve=SolveConfig(solver="picard", max_iter=60, tol=1e-6)),
    "gpt": GPTConfig(**SMALL),
}


def load_module(name, path):
  spec = importlib.util.spec_from_file_location(name, ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tokens(seed=0, length=8):
  return jax.random.randint(jax.random.key(seed), (2, length), 0, VOCAB)


def params_of(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def scanned_twin(model, **changes):
  """A scanned model of `model`'s config holding its (stacked) weights."""
  config = model.config.replace(scan_layers=True, **changes)
  twin = models.build_model(config, rngs=nnx.Rngs(1))
  state = nnx.state(twin, nnx.Param)
  nnx.replace_by_pure_dict(state, block_stack.stack_layers(
      params_of(model), config.LAYER_STACK))
  nnx.update(twin, state)
  return twin


@nnx.jit
def loss_and_grads(model, x):
  return nnx.value_and_grad(lambda m: m(x, targets=x).loss)(model)


def assert_close(a, b, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                               rtol=1e-5)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def looped(request):
  return models.build_model(CONFIGS[request.param], rngs=nnx.Rngs(0))


@pytest.mark.heavy
def test_scanned_forward_and_gradients_equal_the_loop(looped):
  scanned = scanned_twin(looped)
  key = looped.config.LAYER_STACK
  assert isinstance(getattr(scanned, key), block_stack.BlockStack)
  assert isinstance(getattr(looped, key), nnx.List)
  x = tokens()
  logits = nnx.jit(lambda m, t: m(t).logits)
  np.testing.assert_allclose(np.asarray(logits(scanned, x)),
                             np.asarray(logits(looped, x)), atol=1e-6)
  loss_l, grads_l = loss_and_grads(looped, x)
  loss_s, grads_s = loss_and_grads(scanned, x)
  np.testing.assert_allclose(float(loss_s), float(loss_l), atol=1e-6)
  assert_close(nnx.to_pure_dict(grads_s),
               block_stack.stack_layers(nnx.to_pure_dict(grads_l), key))


@pytest.mark.heavy
def test_every_remat_policy_gives_the_same_loss_and_gradients():
  looped = models.build_model(CONFIGS["gpt"], rngs=nnx.Rngs(0))
  x = tokens(1)
  loss, grads = loss_and_grads(looped, x)
  expected = block_stack.stack_layers(nnx.to_pure_dict(grads), "blocks")
  for remat in block_stack.REMAT_POLICIES:
    loss_r, grads_r = loss_and_grads(scanned_twin(looped, remat=remat), x)
    np.testing.assert_allclose(float(loss_r), float(loss), atol=1e-6,
                               err_msg=remat)
    assert_close(nnx.to_pure_dict(grads_r), expected)
  # Remat without the scan: each block of the loop is rematerialised.
  unscanned = models.build_model(CONFIGS["gpt"].replace(remat="full"),
                                 rngs=nnx.Rngs(0))
  loss_u, grads_u = loss_and_grads(unscanned, x)
  np.testing.assert_allclose(float(loss_u), float(loss), atol=1e-6)
  assert_close(grads_u, grads)


@pytest.mark.heavy
def test_cached_decoding_with_a_scanned_backbone():
  looped = models.build_model(CONFIGS["attractor"], rngs=nnx.Rngs(0))
  scanned = scanned_twin(looped)
  x = tokens(2, 10)
  full = nnx.jit(lambda m, t: m(t).logits)(scanned, x)
  step = nnx.jit(lambda m, t, c: m.forward_cached(t, c)[:2])
  for model in (scanned, looped):
    cache = model.init_cache(2, 10)
    assert len(cache["backbone"]) == 3
    first, cache = step(model, x[:, :6], cache)
    rest = []
    for t in range(6, 10):
      logits, cache = step(model, x[:, t:t + 1], cache)
      rest.append(logits)
    cached = jnp.concatenate([first] + rest, axis=1)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full),
                               atol=1e-5)
    assert int(cache["backbone"][2].length) == 10


def test_stacked_parameters_keep_their_axis_names():
  model = models.build_model(CONFIGS["gpt"].replace(scan_layers=True),
                             rngs=nnx.Rngs(0))
  w_in = model.blocks.layers.mlp.w_in
  assert w_in.shape == (3, 16, 32)
  assert w_in.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
  shardings = state_lib.state_shardings(
      nnx.state(model), mesh_lib.make_mesh(devices=jax.devices()[:1]))
  assert tuple(shardings["blocks"]["layers"]["mlp"]["w_in"].get_value().spec
               ) == (None, "fsdp", "tensor")
  # A layer's view has the per-layer names and values.
  layer = model.blocks.layer(1)
  assert layer.mlp.w_in.get_metadata()["out_sharding"] == ("embed", "mlp")
  np.testing.assert_array_equal(np.asarray(layer.mlp.w_in[...]),
                                np.asarray(w_in[...][1]))
  assert len(list(model.blocks)) == len(model.blocks) == 3


def test_unknown_remat_names_are_refused():
  with pytest.raises(errors.ConfigError, match="Unknown model.remat 'all'"):
    ModelConfig(kind="gpt", remat="all")
  with pytest.raises(errors.ConfigError, match="expected one of none, full"):
    block_stack.BlockStack(CONFIGS["gpt"].block_spec(), 2, remat="offload",
                           rngs=nnx.Rngs(0))
  with pytest.raises(errors.ConfigError, match="attractor and gpt models"):
    ModelConfig(kind="deq", scan_layers=True)
  with pytest.raises(errors.ConfigError, match="True or False"):
    ModelConfig(kind="gpt", scan_layers="yes")


def test_stack_and_unstack_round_trip_exactly():
  params = params_of(models.build_model(CONFIGS["attractor"],
                                        rngs=nnx.Rngs(0)))
  stacked = block_stack.stack_layers(params, "backbone")
  assert set(stacked["backbone"]) == {"layers"}
  assert stacked["backbone"]["layers"]["attn"]["wq"].shape == (3, 16, 2, 8)
  assert stacked["head"] is not None and 0 in stacked["head"]["blocks"]
  back = block_stack.unstack_layers(stacked, "backbone")
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Keys as orbax restores them, and a train state's moments, convert too.
  as_saved = {"model": dict(params, backbone={
      str(i): layer for i, layer in params["backbone"].items()}),
              "optimizer": {"mu": params}}
  both = block_stack.stack_layers(as_saved, "backbone")
  assert_close(both["model"], stacked, atol=0)
  assert_close(both["optimizer"]["mu"], stacked, atol=0)
  # The head's blocks are no GPT's blocks: only a model root's entry counts.
  with pytest.raises(ValueError, match="No list of layers under 'blocks'"):
    block_stack.stack_layers(params, "blocks")
  with pytest.raises(ValueError, match="No stacked layers"):
    block_stack.unstack_layers(params, "backbone")


@pytest.mark.heavy
def test_a_looped_checkpoint_into_a_scanned_model(tmp_path):
  looped = models.build_model(CONFIGS["gpt"], rngs=nnx.Rngs(0))
  scanned = models.build_model(CONFIGS["gpt"].replace(scan_layers=True),
                               rngs=nnx.Rngs(1))
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"model": params_of(looped)}, config=looped.config)
    ckpt.wait_until_finished()
    with pytest.raises(checkpoints.ConfigMismatchError,
                       match="(?s)scan_layers.*block_stack.stack_layers"):
      ckpt.restore(1, {"model": params_of(scanned)},
                   current_config=scanned.config, partial=True)
    # The conversion the error message gives.
    target = {"model": block_stack.unstack_layers(params_of(scanned),
                                                  "blocks")}
    params = block_stack.stack_layers(
        ckpt.restore(1, target, partial=True).state["model"], "blocks")
  state = nnx.state(scanned, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(scanned, state)
  x = tokens()
  np.testing.assert_allclose(np.asarray(scanned(x).logits),
                             np.asarray(looped(x).logits), atol=1e-6)


def test_command_line_sets_scan_layers_and_remat():
  argv = ["train", "--config.model.scan_layers=True",
          "--config.model.remat=dots"]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      "config", str(ROOT / "attractor_jax/configs/lm.py"),
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  config = lm_checks.model_config_from(holder.value, VOCAB)
  assert config.scan_layers is True and config.remat == "dots"


@pytest.mark.heavy
def test_training_with_scanned_layers_lowers_the_loss(tmp_path):
  config = tiny_configs.lm_config(total_steps=8)
  config.model.num_layers = 2
  config.model.scan_layers = True
  config.model.remat = "dots"
  config.log_every = 1
  config.checkpoint_every = 8
  summary = trainer.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 8
  losses = [row["loss"] for row in metrics.read_jsonl(
      tmp_path / "metrics.jsonl") if "loss" in row]
  assert len(losses) == 8 and all(np.isfinite(losses))
  assert losses[-1] < losses[0], losses
  with checkpoints.Checkpointer(tmp_path, read_only=True) as ckpt:
    saved = ckpt.restore().state["model"]
  assert np.shape(saved["backbone"]["layers"]["mlp"]["w_in"]) == (2, 32, 64)

