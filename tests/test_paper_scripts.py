"""The paper-in-miniature scripts summarise their runs correctly."""

import importlib.util
import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
  path = ROOT / "experiments" / "paper" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_table5_summary_statistics_and_ratios():
  table5 = load("table5_backward")
  runs = [{"mode": mode, "seed": seed,
           "perplexity": ppl + (1.0 if mode == "phantom" else 0.0),
           "loss": 0.0,
           "tokens": 1000, "iterations": 3.0, "tokens_per_s": rate,
           "wall_s": 1.0}
          for mode, rate in (("implicit", 1000.0), ("phantom", 2000.0),
                             ("onestep", 2500.0))
          for seed, ppl in ((0, 70.0), (1, 72.0), (2, 74.0))]
  memory = {"implicit": 400, "phantom": 200, "onestep": 100}
  rows = {r["mode"]: r for r in table5.summarise(runs, memory)}
  assert rows["implicit"]["perplexity"] == pytest.approx(72.0)
  assert rows["implicit"]["std"] == pytest.approx(2.0)
  assert rows["implicit"]["sem"] == pytest.approx(2.0 / math.sqrt(3))
  assert rows["onestep"]["step_time_ratio"] == pytest.approx(0.4)
  assert rows["phantom"]["memory_ratio"] == pytest.approx(0.5)
  assert rows["phantom"]["diff"] == pytest.approx(1.0)   # paired by seed
  assert rows["phantom"]["diff_sem"] == pytest.approx(0.0)

  class Args:
    steps, seeds = 300, [0, 1, 2]
  text = table5.markdown(list(rows.values()), runs, Args)
  assert "| onestep | 72.00 ± 2.00 | 1.15 | +0.00 ± 0.00 |" in text
  assert "0.40x" in text and "0.25x" in text


def test_table1_counts_flops_per_model_and_pairs_with_gpt():
  table1 = load("table1_models")
  runs = [{"mode": name, "seed": seed, "perplexity": base + shift,
           "loss": 0.0, "tokens": 1000, "iterations": iterations,
           "tokens_per_s": 1000.0, "wall_s": 1.0}
          for name, shift, iterations in (("gpt", 0.0, math.nan),
                                          ("looped", 3.0, 4.0),
                                          ("attractor", -2.0, 3.0))
          for seed, base in ((0, 70.0), (1, 90.0))]
  rows = {r["mode"]: r for r in table1.summarise(runs)}
  assert rows["attractor"]["diff"] == pytest.approx(-2.0)
  assert rows["looped"]["diff"] == pytest.approx(3.0)
  assert rows["gpt"]["std"] > 10       # the seeds' splits differ a lot
  # Every solver iteration counts: the attractor's head runs 3 + 1 + 4 times.
  assert (rows["attractor"]["train_flops_per_token"]
          > rows["gpt"]["train_flops_per_token"] > 0)

  class Args:
    steps, seeds = 300, [0, 1]
  text = table1.markdown(list(rows.values()), runs, Args)
  assert "| attractor | 78.00 ± 14.14 |" in text
