"""The README opens with the two commands a new user runs, and CI runs one."""

import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[1]


def first_code_block_lines():
  text = (ROOT / "README.md").read_text()
  match = re.search(r"```(?:bash)?\n(.*?)```", text, re.S)
  assert match, "README.md must open with a code block of commands"
  assert text.index(match.group(0)) < 200, "the commands must come first"
  return [line for line in match.group(1).splitlines() if line.strip()]


def test_readme_opens_with_main_job_and_test_commands():
  lines = first_code_block_lines()
  assert len(lines) == 2
  main_job, tests = lines
  assert main_job.startswith("pip install -e . && python -m attractor_jax.")
  module = shlex.split(main_job.split("&&")[1])[2]
  path = ROOT / (module.replace(".", "/") + ".py")
  assert path.is_file(), f"main job {module} does not exist"
  assert tests.startswith('pip install -e ".[test]" && python -m pytest')


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  assert "grep -m1 -E '^pip install -e \"\\.\\[test\\]\"' README.md" in ci
  assert 'eval "$test_command"' in ci
