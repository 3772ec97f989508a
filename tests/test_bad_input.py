"""Bad input to train / evaluate / generate / convert: one or two lines, exit 2.

Every case runs the command's main() in-process through `commands.run`, as
`python -m attractor_jax.<command>` does, and checks that stderr holds only
`error: ...` and at most one more line, that the exit status is 2, and that
nothing was written: a fresh workdir (or convert's output) does not exist
afterwards, an existing one is unchanged. A few cases run the real command
in a subprocess. docs/bad_inputs.md lists every case; the last test checks
that the table and the cases agree.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from attractor_jax import commands
from attractor_jax import data as data_lib
from attractor_jax import errors
from attractor_jax.configs import lm
from attractor_jax.tasks.lm import data as lm_data
from attractor_jax.training import tasks
from attractor_jax.training import workdir as workdir_lib
import command_modules

ROOT = pathlib.Path(__file__).resolve().parents[1]
LM = str(ROOT / "attractor_jax" / "configs" / "lm.py")
SUDOKU = str(ROOT / "attractor_jax" / "configs" / "sudoku.py")
DOC = ROOT / "docs" / "bad_inputs.md"
RUN_VOCAB = 400       # the fake run's tokenizer


# --------------------------------------------------------------- fixtures


def run_command(name: str, argv, capsys):
  """(exit status, stderr lines) of `python -m attractor_jax.<name> argv`."""
  with command_modules.imported(name) as module:
    # ml_collections loads a config file as module "config_config" and
    # reuses a loaded one: a file without get_config() would find the last
    # one's (here, the default file's, loaded when train was imported).
    sys.modules.pop("config_config", None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
      commands.run(module.main, argv=[f"attractor_jax.{name}", *argv])
  err = capsys.readouterr().err
  return exit_info.value.code, err.strip().splitlines()


def snapshot(path) -> dict:
  """Every file and folder under `path` with its size and mtime."""
  path = pathlib.Path(path)
  if not path.exists():
    return {}
  return {str(p.relative_to(path)): (p.is_dir(), p.stat().st_size,
                                     p.stat().st_mtime_ns)
          for p in sorted(path.rglob("*"))} | {".": path.is_dir()}


def assert_one_clear_error(status, lines, expected):
  assert status == commands.EXIT_USER_ERROR, lines
  assert 1 <= len(lines) <= 2, lines
  assert lines[0].startswith("error: "), lines
  assert not any("Traceback" in line for line in lines), lines
  assert expected in " ".join(lines), lines


def fake_run_config():
  config = lm.get_config()
  config.data.vocab_size = RUN_VOCAB
  return config


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Bad corpora, a tokenizer, a fake run's workdir and safetensors files."""
  root = tmp_path_factory.mktemp("inputs")
  contents = {"empty": b"", "binary": b"PK\x03\x04\x00\x00" + bytes(range(256)),
              "latin1": "caf\xe9 cr\xe8me\n".encode("latin-1"),
              "small": b"To be, or not to be.\n\n\nThat is all.\n",
              "a_file": b"not a folder", "not_json": b"{nope",
              "raises.py": b"def get_config(variant=None):\n"
                           b"  raise ValueError('my own problem')\n",
              "no_get_config.py": b"CONFIG = {}\n"}
  paths = {"lm": LM}
  for name, content in contents.items():
    (root / name).write_bytes(content)
    paths[name.replace(".py", "")] = str(root / name)
  # A workdir as a run leaves it before its first checkpoint: config.json
  # and a tokenizer of RUN_VOCAB pieces, no checkpoints.
  run = root / "run"
  tokenizer = data_lib.train_sentencepiece(
      data_lib.builtin_corpus()[:40], RUN_VOCAB, run / "tokenizer")
  workdir_lib.save_config(fake_run_config(), str(run))
  paths["run"], paths["tokenizer"] = str(run), str(tokenizer)
  # The same with a checkpoint folder of step 5 (only the folder).
  saved = root / "saved"
  shutil.copytree(run, saved)
  (saved / "checkpoints" / "5").mkdir(parents=True)
  paths["saved"] = str(saved)
  # A safetensors file that is no public Attractor checkpoint.
  safetensors_np.save_file({"foo": np.zeros(3, np.float32)},
                           str(root / "other.safetensors"))
  paths["other_st"] = str(root / "other.safetensors")
  lone = root / "lone"
  lone.mkdir()
  safetensors_np.save_file({"foo": np.zeros(3, np.float32)},
                           str(lone / "model.safetensors"))
  paths["lone_st"] = str(lone / "model.safetensors")
  return paths


# ------------------------------------------------------------------ cases

# (case id, arguments, a piece of the printed message). {name} stands for a
# path of the `files` fixture, {tmp} for the test's tmp_path. train cases get
# --config={lm} first and --workdir={tmp}/wd unless they pass their own.
TRAIN_CASES = [
    ("missing-config-file", ["--config={tmp}/no_such_lm.py"],
     "cannot load the config file"),
    ("unknown-variant", ["--config={lm}:attractor-14m"],
     "Unknown config variant 'attractor-14m'. Did you mean 'attractor-140m'"),
    ("config-file-raises", ["--config={raises}"],
     "raises.py: the config file raised ValueError: my own problem"),
    ("config-file-without-get-config", ["--config={no_get_config}"],
     "no_get_config.py: the config file defines no get_config()"),
    ("unknown-field", ["--config.model.dimm=64"],
     "Did you mean --config.model.dim?"),
    ("unknown-section", ["--config.trainer.steps=5"],
     "the config has no field 'trainer.steps'"),
    ("wrong-type-in-override", ["--config.batch_size=sixteen"],
     "--config.batch_size=sixteen"),
    ("unknown-preset", ["--config.model.preset=gpt-14m"],
     "Unknown preset 'gpt-14m'. Did you mean 'gpt-140m'?"),
    ("unknown-solver", ["--config.solve.solver=newton"],
     "Unknown solve.solver 'newton'"),
    ("unknown-backward", ["--config.solve.backward=adjoint"],
     "Unknown solve.backward 'adjoint'"),
    ("solver-tolerance-zero", ["--config.solve.tol=0"],
     "solve.tol must be > 0"),
    ("heads-do-not-divide-width", ["--config.model.dim=30"],
     "model.dim 30 is not divisible by model.num_heads 4"),
    ("unknown-mlp", ["--config.model.mlp=gelu"], "Unknown model.mlp 'gelu'"),
    ("unknown-injection", ["--config.model.injection=sum"],
     "Unknown model.injection 'sum'; expected one of additive, init_only"),
    ("zero-batch", ["--config.batch_size=0"],
     "config.batch_size must be an integer >= 1"),
    ("zero-eval-interval", ["--config.eval_every=0"],
     "config.eval_every must be an integer >= 1"),
    ("zero-checkpoint-interval", ["--config.checkpoint_every=0"],
     "config.checkpoint_every must be an integer >= 1"),
    ("unknown-data-source", ["--config.data.source=parquet"],
     "Unknown data source 'parquet'"),
    ("text-source-without-path", ["--config.data.source=text"],
     "needs a path"),
    ("missing-data-path", ["--config.data.source=text",
                           "--config.data.path={tmp}/no_corpus"],
     "does not exist"),
    ("empty-corpus", ["--config.data.source=text", "--config.data.path={empty}"],
     "holds no text"),
    ("binary-corpus", ["--config.data.source=text",
                       "--config.data.path={binary}"], "looks binary"),
    ("non-utf8-corpus", ["--config.data.source=text",
                         "--config.data.path={latin1}"], "is not UTF-8 text"),
    ("corpus-too-small-for-a-batch", ["--config.data.source=text",
                                      "--config.data.path={small}"],
     "cannot fill one batch"),
    ("no-validation-split", ["--config.data.validation_fraction=0"],
     "config.data.validation_fraction must be a number in (0, 1)"),
    ("vocabulary-too-small", ["--config.data.vocab_size=100"],
     "config.data.vocab_size 100 is too small"),
    ("missing-tokenizer-model", ["--config.data.tokenizer_model={tmp}/no.model"],
     "does not exist"),
    ("tokenizer-does-not-match-vocab", ["--config.data.tokenizer_model={tokenizer}"],
     f"has {RUN_VOCAB} pieces, but config.data.vocab_size is 1024"),
    ("workdir-tokenizer-does-not-match", ["--workdir={run}"],
     "The workdir's tokenizer"),
    ("workdir-of-another-model", ["--workdir={run}",
                                  f"--config.data.vocab_size={RUN_VOCAB}",
                                  "--config.model.dim=32"],
     "dim: saved 64, current 32"),
    ("workdir-is-a-file", ["--workdir={a_file}"], "is a file"),
    ("mesh-larger-than-the-devices", ["--config.mesh.data=2"],
     "do not divide the number of devices"),
    ("unknown-optimizer", ["--config.optimizer.name=sgd"],
     "Unknown optimizer 'sgd'"),
    ("unknown-schedule", ["--config.optimizer.schedule=linear"],
     "Unknown schedule 'linear'"),
    ("negative-learning-rate", ["--config.optimizer.lr=-0.1"],
     "config.optimizer.lr must be a number > 0"),
    ("negative-sample-temperature", ["--config.sample.temperature=-1"],
     "config.sample.temperature must be a number >= 0"),
    ("sample-longer-than-context", ["--config.sample.num_tokens=500"],
     "--config.sample.num_tokens=127 or less"),
    ("puzzle-unknown-variant", [f"--config={SUDOKU}:trm-tiyn"],
     "Unknown config variant 'trm-tiyn'. Did you mean 'trm-tiny'"),
    ("puzzle-solver-field-without-solver",
     [f"--config={SUDOKU}:trm-tiny", "--config.solve.max_iter=4"],
     "but trm-tiny has no solver"),
    ("puzzle-unknown-puzzle",
     [f"--config={SUDOKU}", "--config.data.puzzle=chess"],
     "Unknown puzzle 'chess'"),
    ("puzzle-exploration-above-one",
     [f"--config={SUDOKU}", "--config.halting.exploration_prob=1.5"],
     "config.halting.exploration_prob must be a number in [0, 1]"),
    ("bfloat16-head-below-its-floor", ["--config.model.dtype=bfloat16"],
     "solve.tol 0.001 is below what a bfloat16 head can reach"),
    ("dcn-data-without-slices", ["--config.mesh.dcn_data=2"],
     "config.mesh.dcn_data 2: the devices span 1 process"),
    ("distributed-flags-incomplete", ["--num_processes=2"],
     "--coordinator_address, --process_id not given"),
    ("process-id-out-of-range", ["--coordinator_address=127.0.0.1:1234",
                                 "--num_processes=2", "--process_id=2"],
     "--process_id=2 must lie in [0, --num_processes=2)"),
    ("coordinator-without-port", ["--coordinator_address=127.0.0.1",
                                  "--num_processes=2", "--process_id=0"],
     "has no port"),
    ("stray-argument", ["extra"], "Unexpected arguments ['extra']"),
    ("unknown-flag", ["--workdri=/tmp/x"],
     "Unknown command line flag 'workdri'"),
]

EVALUATE_CASES = [
    ("no-workdir-flag", [], "--workdir is required"),
    ("not-a-workdir", ["--workdir={tmp}/nowhere"], "is not a training workdir"),
    ("no-checkpoint", ["--workdir={run}"], "No checkpoint in"),
    ("missing-step", ["--workdir={saved}", "--step=7"],
     "No checkpoint of step 7"),
    ("negative-step", ["--workdir={run}", "--step=-1"], "--step=-1 is negative"),
    ("zero-eval-batches", ["--workdir={run}", "--eval_batches=0"],
     "--eval_batches=0 evaluates nothing"),
]

GENERATE_CASES = [
    ("not-a-workdir", ["--workdir={tmp}/nowhere"], "is not a training workdir"),
    ("empty-prompt", ["--workdir={run}", "--prompt="], "--prompt is empty"),
    ("negative-temperature", ["--workdir={run}", "--temperature=-0.5"],
     "--temperature=-0.5 is negative"),
    ("top-k-zero", ["--workdir={run}", "--top_k=0"],
     "--top_k=0 keeps no token"),
    ("top-k-above-vocabulary", ["--workdir={run}", "--top_k=5000"],
     f"exceeds the vocabulary of {RUN_VOCAB}"),
    ("zero-tokens", ["--workdir={run}", "--num_tokens=0"],
     "--num_tokens=0 samples nothing"),
    ("more-tokens-than-context", ["--workdir={run}", "--num_tokens=200"],
     "more than the 128 the model was trained on"),
    ("wrong-type", ["--workdir={run}", "--num_tokens=many"],
     "--num_tokens=many"),
    ("missing-step", ["--workdir={saved}", "--step=3"],
     "No checkpoint of step 3"),
]

CONVERT_CASES = [
    ("no-checkpoint-flag", ["--output={tmp}/out"], "--checkpoint is required"),
    ("missing-checkpoint", ["--checkpoint={tmp}/no.safetensors",
                            "--output={tmp}/out",
                            "--preset=attractor-small-140m"], "does not exist"),
    ("not-safetensors", ["--checkpoint={small}", "--output={tmp}/out",
                         "--preset=attractor-small-140m"],
     "is not a safetensors file"),
    ("unknown-preset", ["--checkpoint={other_st}", "--output={tmp}/out",
                        "--preset=attractor-tiny"],
     "--preset=attractor-tiny"),
    ("preset-and-public-config", ["--checkpoint={other_st}",
                                  "--output={tmp}/out",
                                  "--preset=attractor-small-140m",
                                  "--public_config={not_json}"],
     "Pass only one"),
    ("public-config-not-json", ["--checkpoint={other_st}", "--output={tmp}/out",
                                "--public_config={not_json}"], "is not JSON"),
    ("no-model-description", ["--checkpoint={lone_st}", "--output={tmp}/out"],
     "No --public_config, --preset"),
    ("checkpoint-of-another-model", ["--checkpoint={other_st}",
                                     "--output={tmp}/out",
                                     "--preset=attractor-small-140m"],
     "The checkpoint does not convert"),
]


def _fill(args, files, tmp_path):
  return [a.format(tmp=tmp_path, **files) for a in args]


def _ids(cases):
  return [case[0] for case in cases]


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("case,args,expected", TRAIN_CASES,
                         ids=_ids(TRAIN_CASES))
def test_train(case, args, expected, files, tmp_path, capsys, monkeypatch):
  del case

  def must_not_run(*args, **kwargs):
    raise AssertionError("validate_config passed: the run would train")

  monkeypatch.setattr(lm_data, "prepare_data", must_not_run)
  args = _fill(args, files, tmp_path)
  if not any(a.startswith("--config=") for a in args):
    args = [f"--config={LM}"] + args
  if not any(a.startswith("--workdir=") for a in args):
    args.append(f"--workdir={tmp_path / 'wd'}")
  workdir = [a.split("=", 1)[1] for a in args if a.startswith("--workdir=")][0]
  before = snapshot(workdir)
  status, lines = run_command("train", args, capsys)
  assert_one_clear_error(status, lines, expected)
  assert snapshot(workdir) == before     # {} for a fresh workdir: not made


@pytest.mark.parametrize("case,args,expected", EVALUATE_CASES,
                         ids=_ids(EVALUATE_CASES))
def test_evaluate(case, args, expected, files, tmp_path, capsys):
  del case
  before = [snapshot(files[name]) for name in ("run", "saved")]
  status, lines = run_command("evaluate", _fill(args, files, tmp_path), capsys)
  assert_one_clear_error(status, lines, expected)
  assert [snapshot(files[name]) for name in ("run", "saved")] == before
  assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("case,args,expected", GENERATE_CASES,
                         ids=_ids(GENERATE_CASES))
def test_generate(case, args, expected, files, tmp_path, capsys):
  del case
  before = [snapshot(files[name]) for name in ("run", "saved")]
  status, lines = run_command("generate", _fill(args, files, tmp_path), capsys)
  assert_one_clear_error(status, lines, expected)
  assert [snapshot(files[name]) for name in ("run", "saved")] == before
  assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("case,args,expected", CONVERT_CASES,
                         ids=_ids(CONVERT_CASES))
def test_convert(case, args, expected, files, tmp_path, capsys):
  del case
  status, lines = run_command("convert", _fill(args, files, tmp_path), capsys)
  assert_one_clear_error(status, lines, expected)
  assert not (tmp_path / "out").exists()


def test_batch_the_mesh_cannot_divide(tmp_path):
  # One CPU device here: the check is given 4 devices.
  config = lm.get_config()
  config.batch_size = 6
  with pytest.raises(errors.ConfigError, match="multiple of 4"):
    tasks.validate_config(config, str(tmp_path / "wd"), num_devices=4)
  config.batch_size = 8
  tasks.validate_config(config, str(tmp_path / "wd"), num_devices=4)
  assert not (tmp_path / "wd").exists()


def test_the_default_config_is_valid(tmp_path):
  model_config = tasks.validate_config(lm.get_config(),
                                            str(tmp_path / "wd"))
  assert model_config.vocab_size == lm.get_config().data.vocab_size
  assert not (tmp_path / "wd").exists()


def test_a_bug_keeps_its_traceback():
  def main(argv):
    del argv
    raise RuntimeError("a bug")
  with pytest.raises(RuntimeError, match="a bug"):
    commands.run(main, argv=["prog"])


def test_a_user_error_may_name_its_exit_status(capsys):
  class Diverged(errors.UserError):
    exit_code = 3

  def main(argv):
    del argv
    raise Diverged("the loss ran away\nlower the learning rate")
  with pytest.raises(SystemExit) as exit_info:
    commands.run(main, argv=["prog"])
  assert exit_info.value.code == 3
  assert capsys.readouterr().err == ("error: the loss ran away\n"
                                     "lower the learning rate\n")


def test_long_messages_are_cut_to_two_lines():
  error = errors.ConfigError("3 fields differ:\n  dim: a\n  mlp: b\nUse X.")
  assert commands.message_lines(error) == ["3 fields differ: dim: a; mlp: b",
                                           "Use X."]


# ------------------------------------------- checkpoints (a real, tiny run)

TRAINED_FLAGS = ["--config.model.dim=32", "--config.model.mlp_dim=64",
                 "--config.model.num_heads=2", "--config.model.num_layers=1",
                 "--config.solve.max_iter=4", "--config.data.vocab_size=512",
                 "--config.data.seq_len=32", "--config.batch_size=4",
                 "--config.sample.num_tokens=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained for 2 steps, checkpointed at step 2."""
  from attractor_jax.training import trainer  # pylint: disable=g-import-not-at-top
  config = lm.get_config()
  config.model.dim, config.model.mlp_dim = 32, 64
  config.model.num_heads, config.model.num_layers = 2, 1
  config.solve.max_iter = 4
  config.data.vocab_size, config.data.seq_len = 512, 32
  config.batch_size, config.total_steps = 4, 2
  config.eval_batches, config.checkpoint_every = 1, 2
  config.depth_sweep, config.sample.num_tokens = False, 0
  workdir = tmp_path_factory.mktemp("trained") / "wd"
  trainer.train_and_evaluate(config, str(workdir))
  assert (workdir / "checkpoints" / "2").is_dir()
  return workdir


@pytest.mark.slow
def test_checkpoint_of_another_model(trained, capsys):
  before = snapshot(trained)
  status, lines = run_command(
      "train", [f"--config={LM}", *TRAINED_FLAGS, "--config.model.dim=48",
                f"--workdir={trained}"], capsys)
  assert_one_clear_error(status, lines, "dim: saved 32, current 48")
  assert snapshot(trained) == before


@pytest.mark.slow
@pytest.mark.parametrize("command_name,args", [
    ("evaluate", []), ("evaluate", ["--step=2"]),
    ("generate", ["--num_tokens=4"])], ids=["evaluate-latest",
                                            "evaluate-step", "generate"])
def test_corrupt_checkpoint(command_name, args, trained, tmp_path, capsys):
  workdir = tmp_path / "wd"
  shutil.copytree(trained, workdir)
  damaged = [f for f in (workdir / "checkpoints" / "2" / "state").rglob("*")
             if f.is_file() and f.parent.name == "d"]
  assert damaged
  for name in damaged:
    with open(name, "r+b") as f:
      f.truncate(os.path.getsize(name) // 2)
  before = snapshot(workdir)
  status, lines = run_command(command_name, [f"--workdir={workdir}", *args],
                              capsys)
  assert_one_clear_error(status, lines, "step 2")
  assert snapshot(workdir) == before


# ------------------------------------------------------------ subprocesses


def _subprocess(name, *args, cwd):
  result = subprocess.run(
      [sys.executable, "-m", f"attractor_jax.{name}", *args], cwd=cwd,
      capture_output=True, text=True, timeout=300)
  return result.returncode, result.stderr.strip().splitlines()


def test_command_line_unknown_variant_trains_no_tokenizer(tmp_path):
  status, lines = _subprocess(
      "train", f"--config={LM}:attractor-14m", f"--workdir={tmp_path / 'wd'}",
      cwd=tmp_path)
  assert_one_clear_error(status, lines, "Unknown config variant")
  assert not (tmp_path / "wd").exists()


def test_command_line_unknown_field_without_config_flag(tmp_path):
  # Without --config, ml_collections reads the overrides at import time.
  status, lines = _subprocess(
      "train", "--config.data.vocab_sise=512", f"--workdir={tmp_path / 'wd'}",
      cwd=tmp_path)
  assert_one_clear_error(status, lines, "Did you mean --config.data.vocab_size")
  assert not (tmp_path / "wd").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name,args,expected", [
    ("evaluate", ["--workdir=nowhere"], "is not a training workdir"),
    ("generate", ["--workdir=nowhere", "--top_k=0"], "--top_k=0"),
    ("convert", ["--checkpoint=no.safetensors", "--output=out"],
     "does not exist"),
])
def test_command_line_other_commands(name, args, expected, tmp_path):
  status, lines = _subprocess(name, *args, cwd=tmp_path)
  assert_one_clear_error(status, lines, expected)
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_command_line_batch_the_mesh_cannot_divide(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "attractor_jax.train", "--config.batch_size=3",
       f"--workdir={tmp_path / 'wd'}"], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=300)
  assert_one_clear_error(result.returncode, result.stderr.strip().splitlines(),
                         "does not split over the mesh's 2 data-parallel")
  assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------------- docs


def test_docs_table_lists_every_case():
  rows = [line for line in DOC.read_text().splitlines()
          if line.startswith("| `")]
  documented = set(re.findall(r"`(test_\w+(?:\[[\w-]+\])?)`", "\n".join(rows)))
  cases = {f"test_{name}[{case[0]}]"
           for name, table in (("train", TRAIN_CASES),
                               ("evaluate", EVALUATE_CASES),
                               ("generate", GENERATE_CASES),
                               ("convert", CONVERT_CASES))
           for case in table}
  assert cases <= documented, sorted(cases - documented)
  module = sys.modules[__name__]
  for test_id in documented:
    assert hasattr(module, test_id.split("[")[0]), test_id
    assert "[" not in test_id or test_id in cases, test_id
  assert len(rows) >= 25
