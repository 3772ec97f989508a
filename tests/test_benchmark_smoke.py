"""The benchmarks run and measure sensibly (their numbers go in issue notes)."""

import importlib.util
import math
import pathlib

import pytest

# The heavy tier (.ci/run): each test runs a benchmark script.
pytestmark = pytest.mark.heavy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_benchmark(name="solver_benchmark"):
  path = ROOT / "experiments" / "benchmarks" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quick_benchmark_reports_consistent_numbers(capsys):
  results = load_benchmark().main(["--quick", "--grad_iters", "2", "6"])
  printed = capsys.readouterr().out
  assert "anderson" in printed and "unrolled" in printed
  slow = results["solvers"]["slow"]
  assert slow["anderson"]["f_evals"] <= slow["picard"]["f_evals"]
  assert slow["anderson"]["converged"] >= slow["picard"]["converged"]
  for row in slow.values():
    assert row["seconds"] > 0 and math.isfinite(row["residual"])
  backward = results["backward"]
  for (mode, max_iter), row in backward.items():
    assert row["fwd_iterations"] == max_iter, (mode, row)
    assert row["seconds"] > 0
  if backward[("implicit", 2)]["temp_bytes"] is not None:
    # Flat for implicit, growing for unrolled.
    assert (backward[("implicit", 6)]["temp_bytes"]
            == backward[("implicit", 2)]["temp_bytes"])
    assert (backward[("unrolled", 6)]["temp_bytes"]
            > backward[("unrolled", 2)]["temp_bytes"])


def test_quick_generation_benchmark_decodes_identically(capsys):
  results = load_benchmark("generation_benchmark").main(["--quick"])
  assert "speed-up" in capsys.readouterr().out
  assert results["identical"]
  for rates in (results["end_to_end"], results["decode"]):
    assert rates["cached"] > 0 and rates["uncached"] > 0


def test_quick_scan_compile_benchmark_covers_every_layout(capsys):
  rows = load_benchmark("scan_compile_benchmark").main(
      ["--depths", "2", "--dim", "16", "--seq_len", "8", "--batch", "2",
       "--steps", "1"])
  printed = capsys.readouterr().out
  assert "scan+remat=full" in printed and "compile s" in printed
  assert [r["layout"] for r in rows] == ["loop", "scan", "scan+remat=full"]
  for row in rows:
    assert row["compile_s"] > 0 and row["step_ms"] > 0
  temp = {r["layout"]: r["temp_bytes"] for r in rows}
  if temp["scan"] is not None:
    # Remat is wired in: the backward pass keeps fewer activations.
    assert temp["scan+remat=full"] < temp["scan"]


def test_cpu_forms_benchmark_times_equal_forms_side_by_side(capsys):
  # main raises if the two forms of a row compute different values.
  results = load_benchmark("cpu_forms_benchmark").main(
      ["--repeats=1", "--batch=1", "--seq_len=256"])
  printed = capsys.readouterr().out
  assert results["matmul_gflops"] > 0 and "GFLOP/s" in printed
  rows = {k: v for k, v in results.items() if k != "matmul_gflops"}
  assert len(rows) == 6 and "LM loss: take_along_axis vs one-hot pick" in rows
  for name, (slow, fast) in rows.items():
    assert slow > 0 and fast > 0 and name in printed


def test_config_costs_measures_a_shortened_run(capsys):
  costs = load_benchmark("config_costs")
  result = costs.measure(costs.CONFIGS["lm-default"] + [
      "--config.last_word_examples=0", "--config.depth_sweep=False",
      "--config.sample.num_tokens=0", "--config.eval_batches=1"], steps=2)
  assert result["exit"] == 0, result["error"]
  assert 0 < result["wall_s"] < 600
  assert 0.2 < result["peak_gib"] < 8     # jax alone holds a few 100 MiB
  bad = costs.measure(["--config.total_steps=-1"], steps=None)
  assert bad["exit"] == 2 and "error:" in " ".join(bad["error"])
