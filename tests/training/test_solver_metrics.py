"""Solver metrics in training: every step counts, the backward solve too."""

import jax.numpy as jnp
import pytest

from attractor_jax.training import metrics as metrics_lib
from attractor_jax.training import trainer
from tiny_configs import lm_config as tiny_config

# The heavy tier (.ci/run): trains to count solver failures.
pytestmark = pytest.mark.heavy


def test_the_aggregator_reduces_every_step_since_the_last_log():
  aggregator = metrics_lib.StepAggregator()
  for value in (1.0, 5.0, 3.0):
    aggregator.add({"solver/iterations_mean": jnp.float32(value),
                    "solver/iterations_max": jnp.float32(value),
                    "backward/not_converged_count": jnp.float32(value),
                    "loss": jnp.float32(value)})
  out = aggregator.reduce({"loss": jnp.float32(3.0),
                           "solver/iterations_mean": jnp.float32(3.0)})
  assert out["solver/iterations_mean"] == pytest.approx(3.0)
  assert out["solver/iterations_max"] == 5.0
  assert out["backward/not_converged_count"] == 9.0
  assert out["loss"] == 3.0                      # the logged step's
  # A new interval starts empty.
  aggregator.add({"solver/iterations_max": jnp.float32(2.0)})
  assert aggregator.reduce({})["solver/iterations_max"] == 2.0


def test_backward_failures_on_unlogged_steps_are_counted(tmp_path):
  config = tiny_config(total_steps=6)
  config.log_every = 3
  config.checkpoint_every = 6
  # An implicit backward solve of one step at a tolerance it cannot meet:
  # every example of every step fails.
  config.solve.backward = "implicit"
  config.solve.backward_solver = "picard"
  config.solve.backward_max_iter = 1
  config.solve.backward_tol = 1e-9
  trainer.train_and_evaluate(config, str(tmp_path))
  rows = {row["step"]: row for row in metrics_lib.read_jsonl(
      tmp_path / "metrics.jsonl") if "backward/examples_count" in row}
  assert sorted(rows) == [3, 6]
  for row in rows.values():
    # Three steps of batch 4 each.
    assert row["backward/examples_count"] == 3 * config.batch_size
    assert row["backward/not_converged_count"] == 3 * config.batch_size
    assert row["backward/iterations_mean"] == pytest.approx(1.0)
    assert row["solver/not_converged_count"] >= 0
