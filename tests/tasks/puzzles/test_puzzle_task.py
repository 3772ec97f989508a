"""The puzzle task: stablemax, deep-supervision slots, halting, the stream."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax import errors
from attractor_jax.configs import maze as maze_configs
from attractor_jax.configs import sudoku as sudoku_configs
from attractor_jax.models import reasoning
from attractor_jax.puzzles import sudoku
from attractor_jax.tasks.puzzles import data as puzzle_data
from attractor_jax.tasks.puzzles import task as puzzle_task
from attractor_jax.training import tasks


@pytest.mark.heavy
def test_stablemax_cross_entropy_matches_its_definition():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(4, 5, 7)).astype(np.float32)
  logits[0, 0, :3] = [0.0, 1.0, -1.0]      # the branch points
  labels = rng.integers(7, size=(4, 5))
  with np.errstate(divide="ignore"):
    s = np.where(logits >= 0, logits + 1, 1 / (1 - logits))
  want = -np.log(np.take_along_axis(s, labels[..., None], -1)[..., 0]
                 / s.sum(-1))
  got = puzzle_task.stablemax_cross_entropy(jnp.asarray(logits),
                                            jnp.asarray(labels))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grads = jax.grad(lambda x: puzzle_task.stablemax_cross_entropy(
      x, jnp.asarray(labels)).sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(grads))
  # Raising the right logit lowers the loss.
  assert float(grads[0, 0, labels[0, 0]]) < 0


def test_the_stream_is_a_function_of_seed_and_position():
  data = puzzle_data.load("sudoku", "train").subset(10)
  stream = puzzle_data.TrainStream(data, 4, seed=3)
  first = [next(stream) for _ in range(4)]       # 16 rows: crosses an epoch
  state = stream.get_state()
  assert state == {"epoch": 1, "position": 6}
  later = next(stream)
  resumed = puzzle_data.TrainStream(data, 4, seed=3)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], later["inputs"])
  again = puzzle_data.TrainStream(data, 4, seed=3)
  np.testing.assert_array_equal(next(again)["labels"], first[0]["labels"])
  # Augmented rows stay valid puzzles with their own solutions.
  for batch in first:
    for puzzle, solution in zip(batch["inputs"], batch["labels"]):
      grid, answer = sudoku.from_tokens(puzzle), sudoku.from_tokens(solution)
      assert sudoku.is_solution(answer, grid)


def test_processes_split_the_global_batch_of_a_single_process():
  data = puzzle_data.load("sudoku", "train").subset(20)
  whole = puzzle_data.TrainStream(data, 8, seed=1)
  shards = [puzzle_data.TrainStream(data, 4, seed=1, shard_index=i,
                                    shard_count=2) for i in range(2)]
  for _ in range(4):                      # crosses an epoch
    want = next(whole)
    got = [next(shard) for shard in shards]
    for key in ("inputs", "labels"):
      np.testing.assert_array_equal(
          np.concatenate([g[key] for g in got]), want[key])
  assert shards[1].get_state() == whole.get_state()
  with pytest.raises(ValueError, match="outside"):
    puzzle_data.TrainStream(data, 4, seed=1, shard_index=2, shard_count=2)


def test_the_epoch_order_draws_every_puzzle_once():
  data = puzzle_data.load("maze", "train").subset(12)
  stream = puzzle_data.TrainStream(data, 4, seed=0, augment=False)
  rows = np.concatenate([next(stream)["inputs"] for _ in range(3)])
  keys = {row.tobytes() for row in rows}
  assert keys == {row.tobytes() for row in data.inputs}


def test_tiers_and_answer_cells():
  data = puzzle_data.load("sudoku", "test")
  assert set(data.tiers) == set(sudoku.TIERS)
  assert (data.tiers == "extreme").sum() >= 1000
  mask = data.answer_mask()
  np.testing.assert_array_equal(mask, data.inputs == sudoku.BLANK)
  spread = data.spread(40)
  assert set(spread.tiers) == set(sudoku.TIERS)     # a prefix has one tier
  assert set(data.subset(40).tiers) == {"easy"}
  mazes = puzzle_data.load("maze", "test")
  assert set(mazes.tiers) <= set(puzzle_data.MAZE_TIERS)
  np.testing.assert_array_equal(puzzle_data.maze_tier(
      np.array([111, 120, 121, 140, 141, 200])),
      ["111-120", "111-120", "121-140", "121-140", "141+", "141+"])


def _task(**changes):
  return dataclasses.replace(
      puzzle_task.PuzzleTask(max_segments=4, exploration_prob=0.0), **changes)


def _aux(steps, q_halt):
  steps = jnp.asarray(steps, jnp.int32)
  return puzzle_task.PuzzleStepAux(
      state={"steps": steps}, q_halt=jnp.asarray(q_halt, jnp.float32),
      exact=None, cell_accuracy=None, xent=None, halt_loss=None,
      aux_loss=None, stats=None)


@pytest.mark.heavy
def test_slots_halt_at_the_last_segment_or_when_the_head_says_so():
  task = _task()
  state = task.next_state({}, _aux([1, 2, 4, 1], [-1.0, 1.0, -1.0, -1.0]),
                          jnp.asarray(False), jnp.asarray(0))
  np.testing.assert_array_equal(state["halted"], [False, True, True, False])
  state = task.next_state({}, _aux([1, 2, 4, 1], [-1.0] * 4),
                          jnp.asarray(True), jnp.asarray(0))
  assert bool(jnp.all(state["halted"]))        # a skipped step restarts all
  # Exploration (always on here) forbids halting before 2..4 segments.
  explorer = _task(exploration_prob=1.0)
  state = explorer.next_state({}, _aux([1] * 64, [5.0] * 64),
                              jnp.asarray(False), jnp.asarray(7))
  assert not bool(jnp.any(state["halted"]))
  state = explorer.next_state({}, _aux([4] * 8, [-5.0] * 8),
                              jnp.asarray(False), jnp.asarray(7))
  assert bool(jnp.all(state["halted"]))


@pytest.mark.heavy
def test_halted_slots_take_new_puzzles_and_restart_their_carry():
  config = reasoning.presets.get_preset("trm-tiny")
  model = reasoning.build(config, nnx.Rngs(0))
  task = _task()
  slots = task.initial_state(sudoku_configs.get_config("trm-tiny").lock(),
                             config)
  rng = np.random.default_rng(0)
  old = rng.integers(1, 11, size=(2, 81)).astype(np.int32)
  new = rng.integers(1, 11, size=(2, 81)).astype(np.int32)
  carry = model.initial_carry(2)
  slots.update(
      y=np.asarray(carry.y) + 1.0, z=np.asarray(carry.z) + 1.0,
      inputs=old, labels=old, steps=np.array([2, 3], np.int32),
      halted=np.array([True, False]))
  slots = {k: v[:2] for k, v in slots.items()}
  batch = {"inputs": new, "labels": new, tasks.STATE_KEY: slots}
  _, aux = task.loss(model, batch)
  np.testing.assert_array_equal(aux.state["inputs"][0], new[0])
  np.testing.assert_array_equal(aux.state["inputs"][1], old[1])
  np.testing.assert_array_equal(aux.state["steps"], [1, 4])
  # The kept slot continued from its own (shifted) carry, the other from
  # the initial one: run both by hand.
  want_reset, _ = model(new[:1], model.initial_carry(1))
  np.testing.assert_allclose(aux.state["y"][0], want_reset.y[0], atol=1e-5)
  want_kept, _ = model(old[1:], reasoning.ReasonerCarry(
      jnp.asarray(slots["y"][1:]), jnp.asarray(slots["z"][1:])))
  np.testing.assert_allclose(aux.state["y"][1], want_kept.y[0], atol=1e-5)


def test_configs_resolve_variants_and_refuse_bad_ones():
  for variant, kind in (("tiny", "attractor_reasoner"),
                        ("7m", "attractor_reasoner"),
                        ("27m", "attractor_reasoner"), ("trm-7m", "trm"),
                        ("transformer-tiny", "transformer_reasoner")):
    config = maze_configs.get_config(variant)
    model_config = puzzle_task.model_config_from(config)
    assert model_config.kind == kind
    assert model_config.seq_len == 900 and model_config.vocab_size == 6
  big = puzzle_task.model_config_from(sudoku_configs.get_config("27m"))
  assert big.num_layers == 8 and big.dim == 512 and big.dtype == "bfloat16"
  with pytest.raises(errors.ConfigError, match="Did you mean 'trm-tiny'"):
    sudoku_configs.get_config("trm-tiyn")
  config = sudoku_configs.get_config("trm-tiny")
  config.solve.max_iter = 4
  with pytest.raises(errors.ConfigError, match="has no solver"):
    tasks.validate_config(config)
  config = sudoku_configs.get_config("tiny")
  config.halting.exploration_prob = 1.5
  with pytest.raises(errors.ConfigError, match="exploration_prob"):
    tasks.validate_config(config)
  config = sudoku_configs.get_config("tiny")
  config.data.puzzle = "chess"
  with pytest.raises(errors.ConfigError, match="Unknown puzzle 'chess'"):
    tasks.validate_config(config)
  config = sudoku_configs.get_config("tiny")
  config.unlock()
  config.halting.weight = 1.0
  with pytest.raises(errors.ConfigError, match=r"halting\.weight"):
    tasks.validate_config(config)
  config = sudoku_configs.get_config("tiny")
  del config["halting"]                  # read by the task before validation
  with pytest.raises(errors.ConfigError,
                     match=r"lacks field\(s\) \['halting'\]"):
    tasks.validate_config(config)
  model_config = tasks.validate_config(sudoku_configs.get_config("tiny"))
  assert model_config.kind == "attractor_reasoner"
