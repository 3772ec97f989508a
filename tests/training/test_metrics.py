"""Tests of attractor_jax.training.metrics."""

import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.models.lm_common import LMOutput
from attractor_jax.solvers import SolverStats
from attractor_jax.training import metrics


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def reject_constant(name):
  raise AssertionError(f"non-standard JSON constant {name}")


def test_jsonl_lines_parse_and_hold_the_values(tmp_path):
  with metrics.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(1, {"loss": jnp.float32(3.5), "lr": 1e-3,
                             "skipped": np.int32(2)})
    writer.write_scalars(2, {"loss": float("nan"), "grad_norm": jnp.inf,
                             "x": -math.inf, "tokens_per_s": jnp.array([7.0])})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line, parse_constant=reject_constant)
             for line in lines]
  assert records[0] == {"step": 1, "loss": 3.5, "lr": 1e-3, "skipped": 2.0}
  assert records[1] == {"step": 2, "loss": "nan", "grad_norm": "inf",
                        "x": "-inf", "tokens_per_s": 7.0}
  read = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert math.isnan(read[1]["loss"]) and read[1]["grad_norm"] == math.inf
  # A second writer on the same workdir appends (a resumed run).
  with metrics.MetricWriter(tmp_path, tensorboard=False) as writer:
    writer.write_scalars(3, {"loss": 1.0})
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")
          ] == [1, 2, 3]


def test_event_file_holds_the_scalars(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  for step in range(3):
    writer.write_scalars(step, {"train/loss": 4.0 - step,
                                "solver/iterations_mean": jnp.float32(8.5)})
  writer.close()
  files = os.listdir(tmp_path / "tensorboard")
  assert len(files) == 1 and "tfevents" in files[0]
  scalars = metrics.read_event_scalars(tmp_path / "tensorboard")
  assert scalars["train/loss"] == [(0, 4.0), (1, 3.0), (2, 2.0)]
  assert scalars["solver/iterations_mean"] == [(s, 8.5) for s in range(3)]


def test_event_reader_detects_corruption(tmp_path):
  with metrics.MetricWriter(tmp_path) as writer:
    writer.write_scalars(0, {"loss": 1.0})
  (name,) = os.listdir(tmp_path / "tensorboard")
  path = tmp_path / "tensorboard" / name
  data = bytearray(path.read_bytes())
  data[-6] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="Corrupt"):
    metrics.read_event_scalars(path)


def test_disabled_writer_writes_nothing(tmp_path):
  with metrics.MetricWriter(tmp_path / "run", enabled=False) as writer:
    writer.write_scalars(0, {"loss": 1.0})
  assert not (tmp_path / "run").exists()


def test_non_scalar_metric_is_rejected(tmp_path):
  with metrics.MetricWriter(tmp_path, tensorboard=False) as writer:
    with pytest.raises(ValueError, match="one element"):
      writer.write_scalars(0, {"loss": jnp.ones(3)})


def test_progress_line_with_a_fake_clock():
  clock = FakeClock()
  stream = io.StringIO()
  progress = metrics.ProgressLine(1000, tokens_per_step=1000,
                                  keys=("loss", "lr"), clock=clock,
                                  stream=stream)
  assert progress.print(0, {"loss": 3.2134}) == (
      "step 0/1000 | loss 3.21 | ETA --:--")
  clock.now += 5.0                      # 10 steps in 5 s: 2 steps/s.
  line = progress.print(10, {"loss": jnp.float32(3.0), "lr": 1e-3,
                             "other": 1.0})
  assert line == ("step 10/1000 | loss 3 | lr 0.001 | 2000 tok/s | "
                  "ETA 08:15")
  assert stream.getvalue().splitlines() == [
      "step 0/1000 | loss 3.21 | ETA --:--", line]
  clock.now += 495.0                    # 1000 steps in 500 s: still 2/s.
  assert progress.format(1000).endswith("| 2000 tok/s | ETA 00:00")


def test_progress_line_shows_given_throughput():
  clock = FakeClock()
  progress = metrics.ProgressLine(100, clock=clock)
  progress.format(0)
  clock.now += 3600.0
  assert progress.format(1, {"loss": 2.0, "tokens_per_s": 5400.4}) == (
      "step 1/100 | loss 2 | 5400 tok/s | ETA 4d 03:00:00")


def test_format_duration():
  assert [metrics.format_duration(s) for s in (0, 59.6, 133, 3600, 90061)] == [
      "00:00", "01:00", "02:13", "1:00:00", "1d 01:01:01"]
  assert metrics.format_duration(math.inf) == "--:--"


def solver_stats():
  return SolverStats(
      iterations=jnp.array([2, 4, 6, 8], jnp.int32),
      residual=jnp.array([1e-4, 2e-4, 3e-4, 1e-2]),
      converged=jnp.array([True, True, True, False]),
      nonfinite=jnp.zeros(4, bool), num_f_evals=jnp.array(9, jnp.int32))


def test_summarize_solver_stats():
  summary = metrics.summarize_solver_stats(solver_stats())
  np.testing.assert_allclose(
      [summary[f"solver/{k}"] for k in (
          "iterations_mean", "iterations_max", "residual_mean",
          "residual_max", "converged_fraction", "nonfinite_count",
          "num_f_evals")],
      [5.0, 8.0, 0.00265, 1e-2, 0.75, 0.0, 9.0], rtol=1e-6)
  assert metrics.summarize_solver_stats(None) == {}


def test_lm_scalars():
  output = LMOutput(logits=jnp.zeros((4, 3, 5)), loss=jnp.float32(2.0),
                    stats=solver_stats(),
                    head_contribution=jnp.array([0.1, 0.2, 0.3, 0.4]))
  scalars = metrics.lm_scalars(output, prefix="train/")
  np.testing.assert_allclose(scalars["train/perplexity"], math.exp(2.0),
                             rtol=1e-6)
  np.testing.assert_allclose(scalars["train/head_contribution"], 0.25)
  np.testing.assert_allclose(scalars["train/solver/converged_fraction"], 0.75)
  assert set(metrics.lm_scalars(LMOutput(logits=output.logits))) == set()


def test_gate_means():
  config = ModelConfig(vocab_size=64, dim=32, num_heads=2, mlp_dim=64,
                       num_layers=1, head_layers=2, gate_max=2.0,
                       gate_init=0.5)
  model = AttractorLM(config, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(
      [metrics.gate_means(model)[k] for k in ("gates/attn_mean",
                                              "gates/mlp_mean")],
      [0.5, 0.5], rtol=1e-5)
  raw = model.head.blocks[1].mlp_gate.raw
  raw[...] = jnp.full_like(raw[...], 100.0)        # gate -> gate_max = 2
  from_model = metrics.gate_means(model)
  from_params = metrics.gate_means(nnx.state(model, nnx.Param), gate_max=2.0)
  for means in (from_model, from_params):
    np.testing.assert_allclose(means["gates/attn_mean"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(means["gates/mlp_mean"], 1.25, rtol=1e-5)
