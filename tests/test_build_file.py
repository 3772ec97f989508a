"""BUILD lists every module and test of the repository, and nothing else."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON_TREES = ("attractor_jax", "tests", "experiments", "launch")
RULES = ("py_library", "py_test", "py_binary")


def build_targets():
  """(rule, name, srcs) of every rule call in BUILD, read as Starlark."""
  tree = ast.parse((ROOT / "BUILD").read_text(), filename="BUILD")
  targets = []
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in RULES):
      continue
    kwargs = {kw.arg: kw.value for kw in node.keywords}
    name = ast.literal_eval(kwargs["name"])
    srcs = ast.literal_eval(kwargs["srcs"]) if "srcs" in kwargs else []
    deps = ast.literal_eval(kwargs["deps"]) if "deps" in kwargs else []
    targets.append((node.func.id, name, srcs, deps))
  return targets


def python_files():
  return {
      str(path.relative_to(ROOT))
      for tree in PYTHON_TREES if (ROOT / tree).exists()
      for path in (ROOT / tree).rglob("*.py")
      if "__pycache__" not in path.parts
  }


def test_every_python_file_is_in_build():
  listed = {src for _, _, srcs, _ in build_targets() for src in srcs}
  missing = sorted(python_files() - listed)
  assert not missing, f"Add these files to BUILD: {missing}"


def test_every_listed_file_exists():
  listed = [src for _, _, srcs, _ in build_targets() for src in srcs]
  absent = sorted(src for src in listed if not (ROOT / src).is_file())
  assert not absent, f"BUILD lists files that do not exist: {absent}"


def test_every_test_file_is_a_py_test_and_names_are_unique():
  targets = build_targets()
  test_srcs = {src for rule, _, srcs, _ in targets if rule == "py_test"
               for src in srcs}
  test_files = {f for f in python_files()
                if pathlib.PurePath(f).name.startswith("test_")}
  assert test_files <= test_srcs, sorted(test_files - test_srcs)
  names = [name for _, name, _, _ in targets]
  assert len(names) == len(set(names)), "duplicate target names in BUILD"


def test_local_deps_name_existing_targets():
  names = {name for _, name, _, _ in build_targets()}
  for _, name, _, deps in build_targets():
    for dep in deps:
      if dep.startswith(":"):
        assert dep[1:] in names, f"{name} depends on unknown target {dep}"
