"""Tests of attractor_jax.training.checkpoints."""

import glob
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.training import checkpoint_integrity
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


@pytest.mark.heavy
def test_round_trip_is_exact(tmp_path):
  state = train_state()
  data_state = {"epoch": 2, "position": 12345, "files": ["a.txt", "b.txt"],
                "rng": {"seed": 3, "shuffle": True}}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(10, state, data_state, TINY)
    ckpt.wait_until_finished()
    restored, data, config, _ = ckpt.restore(abstract_state=state)
  assert_trees_equal(restored, state)
  assert data == data_state
  assert config == checkpoints.config_to_dict(TINY)
  assert config["solve"]["max_iter"] == TINY.solve.max_iter
  # A target of ShapeDtypeStructs works the same.
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    again, _, _, _ = ckpt.restore(10, checkpoints.abstract_like(state))
  assert_trees_equal(again, state)


@pytest.mark.heavy
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
    restored, _, _, _ = ckpt.restore(abstract_state=state,
                                     current_config=TINY)
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
    assert ckpt.restore_latest_readable(state) is None
    assert ckpt.latest_step() is None
    for step in (1, 2, 3, 4):
      assert ckpt.save(step, {"w": state["w"] + step}, {"position": step})
      if step < 4:
        ckpt.confirm()          # the trainer: the step after it was good
    ckpt.wait_until_finished()
    # 4 is unconfirmed: kept on top of the 2 latest confirmed.
    assert ckpt.all_steps() == [2, 3, 4]
    assert not ckpt.save(4, state)           # already saved
  # Closing confirms 4.
  # A new run on the same workdir resumes from the latest checkpoint.
  with checkpoints.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.latest_step() == 4
    restored, data, _, _ = ckpt.restore_latest_readable(state)
    np.testing.assert_array_equal(restored["w"], state["w"] + 4)
    assert data == {"position": 4}
    restored, data, _, _ = ckpt.restore(3, state)
    np.testing.assert_array_equal(restored["w"], state["w"] + 3)
    with pytest.raises(FileNotFoundError, match="step 1"):
      ckpt.restore(1, state)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def test_unconfirmed_checkpoints_are_set_aside_not_rotated_in(tmp_path):
  state = {"w": jnp.arange(4.0)}
  with checkpoints.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(1, state)
    ckpt.confirm()
    for step in (2, 3):              # saved, then training diverged
      ckpt.save(step, {"w": state["w"] + 1e6})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2, 3]
    moved = ckpt.set_aside_unconfirmed("diverged")
    assert [p.name.split("-")[:2] for p in moved] == [["2", "diverged"],
                                                      ["3", "diverged"]]
    assert ckpt.all_steps() == [1]
  with checkpoints.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    restored, _, _, step = ckpt.restore_latest_readable(state)
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state["w"])


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


def test_a_checkpoint_of_another_shape_names_arrays_and_fields(tmp_path):
  state = {"params": {"w": jnp.zeros((32, 64)), "b": jnp.zeros(3)}}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {}, {"model": TINY, "train": {"lr": 1e-3}})
  other = {"params": {"w": jnp.zeros((64, 64)), "g": jnp.zeros(3)}}
  current = {"model": TINY.replace(dim=64), "train": {"lr": 1e-3}}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.ConfigMismatchError) as info:
      ckpt.restore(abstract_state=other, current_config=current)
    message = str(info.value)
    assert "3 array(s) differ" in message
    assert "params/w: checkpoint has float32[32, 64], model expects " \
        "float32[64, 64]" in message
    assert "params/b: in the checkpoint" in message
    assert "params/g: not in the checkpoint" in message
    assert "model.dim: saved 32, current 64" in message
    assert "lr" not in message
    # The same tree under other settings (a new lr, a new solver tolerance)
    # restores: only the arrays decide.
    restored, _, _, _ = ckpt.restore(abstract_state=state, current_config={
        "model": TINY.replace(rope_theta=1.0), "train": {"lr": 1.0}})
  assert_trees_equal(restored, state)


@pytest.mark.heavy
def test_partial_restore_reads_only_the_parameters(tmp_path):
  state = train_state()
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    restored, _, _, _ = ckpt.restore(
        abstract_state={"params": state["params"]}, partial=True)
    assert set(restored) == {"params"}
    assert_trees_equal(restored["params"], state["params"])
    with pytest.raises(checkpoints.ConfigMismatchError, match="not in the"):
      ckpt.restore(abstract_state={"params": {"extra": jnp.zeros(2)}},
                   partial=True)


def test_check_compatible():
  checkpoints.check_compatible({"a": 1, "b": {"dim": 2}},
                               {"a": 1, "b": {"dim": 2}})
  with pytest.raises(checkpoints.ConfigMismatchError, match="a: saved 1"):
    checkpoints.check_compatible({"a": 1}, {"a": 5})
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


def _damage(step_dir, how):
  """Damages the array files of a saved step the way crashed disks do."""
  files = [f for f in glob.glob(str(step_dir / "state" / "**" / "d" / "*"),
                                recursive=True) if os.path.isfile(f)]
  assert files
  for name in files:
    if how == "truncate":
      with open(name, "r+b") as f:
        f.truncate(os.path.getsize(name) // 2)
    else:
      os.remove(name)


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_an_unreadable_latest_step_falls_back_to_the_previous(tmp_path, how):
  state = {"w": jnp.arange(64.0)}
  with checkpoints.Checkpointer(tmp_path, max_to_keep=None) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, {"w": state["w"] + step}, {"position": step})
  _damage(tmp_path / "checkpoints" / "3", how)
  with checkpoints.Checkpointer(tmp_path, max_to_keep=None) as ckpt:
    with pytest.raises(checkpoints.CheckpointError, match="step 3"):
      ckpt.restore(abstract_state=state)
    restored, data, _, _ = ckpt.restore_latest_readable(state)
    np.testing.assert_array_equal(restored["w"], state["w"] + 2)
    assert data == {"position": 2}
    assert ckpt.all_steps() == [1, 2]
    # Step 3 can be written again: the damaged copy is out of the way...
    assert ckpt.save(3, {"w": state["w"] + 30}, {"position": 3}, force=True)
  # ...and kept, not deleted.
  moved = os.listdir(tmp_path / checkpoints.SET_ASIDE_DIR)
  assert len(moved) == 1 and moved[0].startswith("3-unreadable-")


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"w": jnp.arange(8.0)})
  _damage(tmp_path / "checkpoints" / "1", "truncate")
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.CheckpointError, match="None of the 1"):
      ckpt.restore_latest_readable({"w": jnp.zeros(8)})


def test_arrays_that_do_not_match_their_checksums_are_refused(tmp_path):
  state = {"w": jnp.arange(16.0), "b": jnp.ones(3, jnp.bfloat16)}
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, state)
  # Readable files whose values are not what was saved: forge the record.
  path = tmp_path / "checkpoints" / "5" / "checksums" / "metadata"
  sums = json.loads(path.read_text())
  sums["w"] = f"{(int(sums['w'], 16) ^ 1):08x}"
  path.write_text(json.dumps(sums))
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"step 5 .* corrupt: 1 array\(s\) .*\(w\)"):
      ckpt.restore(abstract_state=state)


def test_checksums_see_a_flipped_bit_and_a_swap():
  x = jnp.arange(10.0)
  base = checkpoint_integrity.tree_checksums({"x": x})
  flipped = jax.lax.bitcast_convert_type(x, jnp.uint32).at[3].add(1)
  flipped = jax.lax.bitcast_convert_type(flipped, jnp.float32)
  assert checkpoint_integrity.checksum_mismatches(base, {"x": flipped}) == [
      "x"]
  swapped = x.at[0].set(x[1]).at[1].set(x[0])
  assert checkpoint_integrity.checksum_mismatches(base, {"x": swapped}) == [
      "x"]
  assert checkpoint_integrity.checksum_mismatches(base, {"x": x + 0}) == []


_KILL_MID_SAVE = """
import os, signal, sys, time
import jax.numpy as jnp
from attractor_jax.training import checkpoints
ckpt = checkpoints.Checkpointer(sys.argv[1])
ckpt.save(1, {"w": jnp.zeros((256, 1024))}, {"position": 1})
ckpt.wait_until_finished()
ckpt.save(2, {"w": jnp.ones((256, 1024))}, {"position": 2})
# Die as soon as the asynchronous save of step 2 has begun writing.
root = os.path.join(sys.argv[1], "checkpoints")
for _ in range(20000):
  if any("tmp" in name for name in os.listdir(root)):
    break
  time.sleep(0.0005)
print("partial:", sorted(os.listdir(root)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.heavy
def test_a_process_killed_mid_save_leaves_the_previous_step(tmp_path):
  result = subprocess.run([sys.executable, "-c", _KILL_MID_SAVE,
                           str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert "partial:" in result.stdout
  with checkpoints.Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() in ([1], [1, 2])    # 2 only if it completed
    restored, data, _, _ = ckpt.restore(1, {"w": jnp.zeros((256, 1024))})
    np.testing.assert_array_equal(restored["w"], 0.0)
    assert data == {"position": 1}
    assert ckpt.save(3, {"w": jnp.ones((256, 1024))}, force=True)
  # The temporary directory of the killed save is gone.
  assert not [n for n in os.listdir(tmp_path / "checkpoints") if "tmp" in n]
