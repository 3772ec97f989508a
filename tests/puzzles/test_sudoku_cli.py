"""The `rate` and `build-sudoku` commands (python -m attractor_jax.puzzles)."""

import dataclasses
import json
import subprocess
import sys

import pytest

from attractor_jax.puzzles import __main__ as puzzles_main
from attractor_jax.puzzles import sudoku
from attractor_jax.puzzles import sudoku_build

INVALID = "55" + "." * 79           # a repeated digit in a row
AMBIGUOUS = "." * 40 + "1" + "." * 40


def _run(*args, stdin=None):
  return subprocess.run(
      [sys.executable, "-m", "attractor_jax.puzzles", *args],
      input=stdin, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.heavy
def test_rate_prints_one_json_object_per_puzzle_in_order(tmp_path):
  unique = sudoku.FAMOUS["AI Escargot"].replace(".", "0")
  path = tmp_path / "puzzles.txt"
  path.write_text(f"{unique}\n\n{INVALID}\n{AMBIGUOUS}\n")
  result = _run("rate", str(path), "--isomorphs", "16", "--seed", "4")
  assert result.returncode == 0, result.stderr
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line["solutions"] for line in lines] == [1, 0, 2]
  assert [line["puzzle"] for line in lines] == [
      sudoku.FAMOUS["AI Escargot"], INVALID, AMBIGUOUS]
  assert lines[0]["rating"] == sudoku.rate(unique, 16, seed=4) > 0
  assert lines[0]["tier"] == sudoku.tier_of(lines[0]["rating"])
  assert sudoku.is_solution(lines[0]["solution"], unique)
  for line in lines[1:]:
    assert line["rating"] is None and line["solution"] is None


def test_rate_rejects_bad_input(tmp_path, capsys):
  path = tmp_path / "puzzles.txt"
  path.write_text("." * 81 + "\n" + "1234\n")
  for args in (["rate", str(path)],
               ["rate", str(tmp_path / "absent.txt")],
               ["rate", str(path), "--isomorphs", "0"],
               ["rate", str(path), "--seed", "-1"]):
    assert puzzles_main.main(args) == 2, args
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: "), (args, err)
  puzzles_main.main(["rate", str(path)])
  assert ":2:" in capsys.readouterr().err   # the line at fault


def test_tier_quotas_add_up():
  assert sudoku_build.tier_quotas(5000) == [1000, 1400, 1600, 1000]
  assert sudoku_build.tier_quotas(1000) == [200, 280, 320, 200]
  assert sum(sudoku_build.tier_quotas(7)) == 7


@pytest.mark.heavy
def test_tiny_builds_with_one_seed_are_identical(tmp_path):
  effort = dataclasses.replace(sudoku_build.Effort(), steps=30, cut_step=10,
                               fresh=2)
  outputs = []
  for name in ("a", "b"):
    sudoku_build.build(tmp_path / name, seed=7, n_train=2, n_test=3,
                       effort=effort, fractions=(1, 1, 0, 0), log=None)
    outputs.append([(tmp_path / name / f"{split}.csv").read_bytes()
                    for split in ("train", "test")])
  assert outputs[0] == outputs[1]
  train = sudoku.read_csv(tmp_path / "a" / "train.csv")
  test = sudoku.read_csv(tmp_path / "a" / "test.csv")
  assert (len(train.puzzles), len(test.puzzles)) == (2, 3)
  for split in (train, test):
    for puzzle, solution, rating in zip(*split):
      assert sudoku.solve(puzzle)[0] == 1
      assert sudoku.is_solution(solution, puzzle)
      assert rating == sudoku.rate(puzzle)
  other = tmp_path / "c"
  sudoku_build.build(other, seed=8, n_train=2, n_test=3, effort=effort,
                     fractions=(1, 1, 0, 0), log=None)
  assert (other / "test.csv").read_bytes() != outputs[0][1]


@pytest.mark.slow
def test_build_command_output_does_not_depend_on_workers(tmp_path):
  args = ["build-sudoku", "--seed", "3", "--train", "2", "--test", "3",
          "--steps", "40", "--tiers", "1,1,0,0"]
  for name, workers in (("one", "1"), ("two", "2")):
    result = _run(*args, "--out", str(tmp_path / name), "--workers", workers)
    assert result.returncode == 0, result.stderr
  for split in ("train.csv", "test.csv"):
    assert ((tmp_path / "one" / split).read_bytes()
            == (tmp_path / "two" / split).read_bytes())
