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


def fake_runs(shifts: dict, seeds=((0, 70.0), (1, 90.0), (2, 80.0))):
  """Runs whose perplexity is the seed's base plus the variant's shift; the
  last-word accuracy falls by a point per unit of shift."""
  return [{"mode": name, "seed": seed, "perplexity": base + shift,
           "loss": 0.0, "tokens": 1000, "iterations": 4.0 + shift,
           "converged_fraction": 1.0 - shift / 100,
           "last_word_accuracy": 0.2 - shift / 100 + seed / 1000,
           "last_word_perplexity": 1000.0 * (1 + shift) + 100 * seed,
           "last_word_words": 900, "tokens_per_s": 1000.0, "wall_s": 1.0}
          for name, shift in shifts.items() for seed, base in seeds]


def test_ablation_table_pairs_perplexity_and_last_words_by_seed():
  import sys                               # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT / "experiments" / "paper"))
  common = load("common")
  runs = fake_runs({"additive": 0.0, "concat": 2.0, "init_only": 10.0})
  rows = {r["mode"]: r for r in common.over_seeds(
      runs, ("additive", "concat", "init_only"), "additive")}
  assert rows["init_only"]["diff"] == pytest.approx(10.0)
  assert rows["init_only"]["diff_sem"] == pytest.approx(0.0)
  assert rows["concat"]["last_word_diff"] == pytest.approx(-0.02)
  assert rows["concat"]["last_word_mean"] == pytest.approx(0.181)
  assert rows["init_only"]["converged_fraction"] == pytest.approx(0.9)
  lines = common.ablation_table(
      list(rows.values()), "additive",
      {"additive": 1000, "concat": 1500, "init_only": 1000})
  assert rows["concat"]["last_word_ppl_diff"] == pytest.approx(2000.0)
  assert ("| init_only | 90.00 ± 10.00 | 5.77 | +10.00 ± 0.00 | 11.1k ± 0.1k "
          "| 10.1% | 1k | 14.0 | 90.0% |") in lines
  # A model without solver statistics shows dashes, not NaN.
  gpt = dict(rows["additive"], iterations=float("nan"),
             converged_fraction=float("nan"))
  assert common.ablation_table([gpt], "additive", {"additive": 2e5})[-1] \
      .endswith("| 200k | - | - |")


def test_table2_pairs_blank_cell_accuracy_with_the_transformer():
  table2 = load("table2_reasoning")
  runs = []
  for seed, base in ((0, 0.19), (1, 0.20), (2, 0.18)):
    for name, gain in (("attractor", 0.02), ("trm", 0.01),
                       ("transformer", 0.0)):
      runs.append(table2.run_row(name, seed, {
          "wall_seconds": 60.0, "command": "train", "exact_accuracy": 0.0,
          "blank_cell_accuracy": base + gain, "cell_accuracy": 0.4}))
  rows = {r["mode"]: r for r in table2.summarise(runs)}
  assert rows["attractor"]["blank_cell_accuracy/diff"] == pytest.approx(0.02)
  assert rows["attractor"]["blank_cell_accuracy/diff_sem"] == pytest.approx(
      0.0, abs=1e-12)
  assert rows["trm"]["blank_cell_accuracy/mean"] == pytest.approx(0.20)

  class Args:
    steps, seeds = 1000, [0, 1, 2]
  text = table2.markdown(list(rows.values()), runs, Args)
  assert "| attractor | 0.0% | 21.0 ± 1.0% | +2.0 ± 0.0 | 40.0% |" in text
