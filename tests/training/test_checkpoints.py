"""Tests of attractor_jax.training.checkpoints."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.training import checkpoints
from attractor_jax.training import optimizers

TINY = ModelConfig(vocab_size=64, dim=32, num_heads=2, mlp_dim=64,
                   num_layers=1, head_layers=1)


def assert_trees_equal(a, b):
  """Levanter style: same structure, dtypes, shapes and values, exactly."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def train_state(seed=0):
  """params + a non-trivial optimizer state + step, of several dtypes."""
  keys = jax.random.split(jax.random.key(seed), 3)
  params = {"backbone": {"w": jax.random.normal(keys[0], (8, 16)),
                         "wq": jax.random.normal(keys[1], (16, 2, 4))},
            "embed": {"embedding": jax.random.normal(keys[2], (10, 8),
                                                     jnp.bfloat16)},
            "head": {"attn_gate": {"raw": jnp.full((8,), -2.0)}}}
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(name="muon"))
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, params)
  _, opt_state = jax.jit(tx.update)(grads, opt_state, params)
  return {"params": params, "opt_state": opt_state,
          "step": jnp.array(seed + 7, jnp.int32)}


def test_round_trip_is_exact(tmp_path):
  state = train_state()
  data_state = {"epoch": 2, "position": 12345, "files": ["a.txt", "b.txt"],
                "rng": {"seed": 3, "shuffle": True}}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(10, state, data_state, TINY)
    ckpt.wait_until_finished()
    restored, data, config = ckpt.restore(abstract_state=state)
  assert_trees_equal(restored, state)
  assert data == data_state
  assert config == checkpoints.config_to_dict(TINY)
  assert config["solve"]["max_iter"] == TINY.solve.max_iter
  # A target of ShapeDtypeStructs works the same.
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    again, _, _ = ckpt.restore(10, checkpoints.abstract_like(state))
  assert_trees_equal(again, state)


def test_round_trip_of_an_nnx_optimizer(tmp_path):
  model = AttractorLM(TINY, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optimizers.make_optimizer(
      optimizers.OptimizerConfig(name="adamw")), wrt=nnx.Param)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01),
                       nnx.state(model, nnx.Param))
  nnx.jit(lambda m, o, g: o.update(m, g))(model, opt, grads)
  state = {"params": nnx.as_pure(nnx.state(model, nnx.Param)),
           "optimizer": nnx.as_pure(nnx.state(opt))}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {}, TINY)
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    restored, _, _ = ckpt.restore(abstract_state=state, current_config=TINY)
  assert_trees_equal(restored, state)
  assert int(restored["optimizer"]["step"]) == 1
  # Put it back into fresh objects.
  fresh = AttractorLM(TINY, rngs=nnx.Rngs(1))
  fresh_opt = nnx.Optimizer(fresh, optimizers.make_optimizer(
      optimizers.OptimizerConfig(name="adamw")), wrt=nnx.Param)
  nnx.update(fresh, restored["params"])
  nnx.update(fresh_opt, restored["optimizer"])
  assert_trees_equal(nnx.as_pure(nnx.state(fresh_opt)), state["optimizer"])
  assert_trees_equal(nnx.as_pure(nnx.state(fresh, nnx.Param)),
                     state["params"])


def test_keeps_last_n_and_resumes_from_latest(tmp_path):
  state = {"w": jnp.arange(4.0)}
  with checkpoints.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.maybe_restore(state) is None
    assert ckpt.latest_step() is None
    for step in (1, 2, 3, 4):
      assert ckpt.save(step, {"w": state["w"] + step}, {"position": step})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 4]
    assert not ckpt.save(4, state)           # already saved
  # A new run on the same workdir resumes from the latest checkpoint.
  with checkpoints.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 4
    restored, data, _ = ckpt.maybe_restore(state)
    np.testing.assert_array_equal(restored["w"], state["w"] + 4)
    assert data == {"position": 4}
    restored, data, _ = ckpt.restore(3, state)
    np.testing.assert_array_equal(restored["w"], state["w"] + 3)
    with pytest.raises(FileNotFoundError, match="step 1"):
      ckpt.restore(1, state)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def test_save_interval_and_force(tmp_path):
  state = {"w": jnp.zeros(3)}
  with checkpoints.Checkpointer(tmp_path, save_interval_steps=5,
                                max_to_keep=None, async_save=False) as ckpt:
    # Orbax saves the first step of an empty directory, then multiples of 5.
    assert [ckpt.save(s, state) for s in range(1, 11)] == [
        True] + [False] * 3 + [True] + [False] * 4 + [True]
    assert ckpt.save(12, state, force=True)
    assert not ckpt.reached_preemption(12)
    assert ckpt.all_steps() == [1, 5, 10, 12]


def test_config_mismatch_names_the_fields(tmp_path):
  state = {"w": jnp.zeros(3)}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {}, {"model": TINY, "train": {"lr": 1e-3}})
  current = {"model": TINY.replace(dim=64, mlp_dim=128),
             "train": {"lr": 5e-4}}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.ConfigMismatchError) as info:
      ckpt.restore(abstract_state=state, current_config=current)
    # Only shape fields are compared by default: lr may change on resume.
    message = str(info.value)
    assert "model.dim: saved 32, current 64" in message
    assert "model.mlp_dim: saved 64, current 128" in message
    assert "lr" not in message
    assert "2 field(s)" in message
    # Same shapes, other settings changed: fine.
    ckpt.restore(abstract_state=state, current_config={
        "model": TINY.replace(rope_theta=1.0), "train": {"lr": 1.0}})


def test_check_compatible():
  checkpoints.check_compatible({"a": 1, "b": {"dim": 2}},
                               {"a": 5, "b": {"dim": 2}})
  with pytest.raises(checkpoints.ConfigMismatchError, match="a: saved 1"):
    checkpoints.check_compatible({"a": 1}, {"a": 5}, keys=None)
  with pytest.raises(checkpoints.ConfigMismatchError,
                     match="num_layers: saved 2, current <missing>"):
    checkpoints.check_compatible({"num_layers": 2}, {})


def test_corrupt_checkpoint_names_step_and_path(tmp_path):
  state = {"w": jnp.arange(100.0)}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state, {"position": 1})
  step_dir = tmp_path / "checkpoints" / "3"
  for name in glob.glob(str(step_dir / "state" / "**" / "d" / "*"),
                        recursive=True):
    with open(name, "wb") as f:
      f.write(b"not an array")
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.CheckpointError) as info:
      ckpt.restore(abstract_state=state)
  assert "step 3" in str(info.value)
  assert str(step_dir) in str(info.value)


def test_corrupt_data_state_is_reported(tmp_path):
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, {"w": jnp.zeros(2)}, {"position": 1})
  (tmp_path / "checkpoints" / "2" / "data" / "metadata").write_text("{")
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.CheckpointError, match="step 2"):
      ckpt.restore(abstract_state={"w": jnp.zeros(2)})


def test_config_to_dict_is_json_safe():
  config = checkpoints.config_to_dict(
      {"dtype": jnp.float32, "shape": (1, 2), "x": float("nan"),
       "n": np.int64(3)})
  assert config == {"dtype": str(jnp.float32), "shape": [1, 2], "x": "nan",
                    "n": 3}
