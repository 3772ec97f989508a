"""The LM step benchmark measures what it says (numbers go in issue notes)."""

import math

import pytest

from test_benchmark_smoke import load_benchmark

from attractor_jax import models
from attractor_jax.models import flops

# The heavy tier (.ci/run): the step benchmark, compiled several ways.
pytestmark = pytest.mark.heavy


def test_quick_step_benchmark_forces_iterations_and_counts_flops(capsys):
  benchmark = load_benchmark("lm_step_benchmark")
  result = benchmark.main(["--quick", "--model=attractor-tiny",
                           "--forced_iters=3", "--memory_depths=2,6",
                           "--reference_ms=1000"])
  printed = capsys.readouterr().out
  assert "tokens/s" in printed and "MFU" in printed
  assert result["reference_ratio"] == pytest.approx(result["seconds"])
  assert f"{result['reference_ratio']:.2f}x" in printed
  assert result["iterations"] == 3.0
  assert "iterations 3.0 (4.0 map evaluations)" in printed
  assert result["seconds"] > 0 and math.isfinite(result["loss"])
  assert result["tokens_per_s"] > 0
  config = benchmark.model_config(benchmark.parse_args(
      ["--model=attractor-tiny"]))
  assert result["flops_per_step"] == (
      flops.train_flops_per_token(config, 32, 3.0) * 2 * 32)
  rows = {row["depth"]: row for row in result["memory"]}
  if rows[2]["onestep"] is not None:
    # Implicit-style backward: flat in depth; unrolled: grows.
    assert rows[6]["onestep"] == rows[2]["onestep"]
    assert rows[6]["unrolled"] > rows[2]["unrolled"]


def test_public_cpu_model_has_the_public_shapes():
  benchmark = load_benchmark("lm_step_benchmark")
  config = benchmark.public_cpu_config()
  assert (config.dim, config.num_heads, config.mlp_dim, config.num_layers,
          config.head_layers, config.vocab_size) == (256, 4, 1024, 4, 1, 2048)
  assert round(models.parameter_count(config) / 1e6, 2) == 4.46


def test_forced_evals_counts_the_start_as_the_first_map_evaluation():
  benchmark = load_benchmark("lm_step_benchmark")
  by_evals = benchmark.model_config(benchmark.parse_args(["--forced_evals=12"]))
  by_iters = benchmark.model_config(benchmark.parse_args(["--forced_iters=11"]))
  assert by_evals.solve == by_iters.solve
  assert (by_evals.solve.max_iter, by_evals.solve.min_iter) == (11, 4)
  for argv in (["--forced_evals=3", "--forced_iters=3"], ["--forced_evals=0"]):
    with pytest.raises(SystemExit):
      benchmark.parse_args(argv)
