"""The LM step benchmark measures what it says (numbers go in issue notes)."""

import math

import pytest

from test_benchmark_smoke import load_benchmark

from attractor_jax import models
from attractor_jax.models import flops


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
