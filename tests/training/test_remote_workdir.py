"""A workdir on GCS (`gs://BUCKET/PATH`): every file lands in the bucket.

There is no GCS here, so the bucket is faked in-process: etils'
`epath.testing.mock_epath` swaps epath's backends for one whose functions
map `gs://BUCKET/KEY` to `<tmp>/BUCKET/KEY`, with object-store rules on top
(no append; a write needs no folder; every rename is recorded, the code
must not rely on one). Orbax reaches GCS through epath too, except for two
calls that need Google's clients: TensorStore's `gcs` kvstore (patched to
the `file` driver at the same local folder) and the hierarchical-namespace
lookup of the bucket (patched to "no"). Everything else runs orbax's GCS code
paths (commit_success.txt files instead of renames).

What matters: after training with --workdir=gs://bucket/run, config.json,
tokenizer.model, metrics.jsonl, tensorboard/, checkpoints/, eval/ and
sample.txt are in the bucket, nothing named `gs:` (or anything else) appears
in the current directory, and evaluate and generate read the run back.
"""

import contextlib
import json
import os

from etils import epath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils
import pytest

from attractor_jax import commands
from attractor_jax import data as data_lib
from attractor_jax import errors
from attractor_jax.tasks.lm import checks as lm_checks
from attractor_jax.tasks.lm import data as lm_data
from attractor_jax.tasks.lm import evaluation
from attractor_jax.training import metrics
from attractor_jax.training import remote_lock
from attractor_jax.training import run_guards
from attractor_jax.training import trainer
from attractor_jax.training import workdir as workdir_lib

import command_modules
from tiny_configs import lm_config as tiny_config

# The heavy tier (.ci/run): whole runs against a fake bucket.
pytestmark = pytest.mark.heavy

WORKDIR = "gs://bucket/run"


class FakeBucket:
  """What the fake GCS saw: (operation, path[, other]) for every call."""

  def __init__(self, root):
    self.root = os.fspath(root)
    self.calls = []

  def local(self, path) -> str:
    path = os.fspath(path)
    if path.startswith("gs://"):
      return os.path.join(self.root, path[len("gs://"):])
    return path

  def remote(self, path) -> str:
    path = os.fspath(path)
    if path == self.root or path.startswith(self.root + os.sep):
      return "gs://" + os.path.relpath(path, self.root)
    return path

  def files(self, prefix: str = "bucket") -> list[str]:
    """The keys under gs://<prefix>, relative to it, sorted."""
    top = os.path.join(self.root, prefix)
    return sorted(os.path.relpath(os.path.join(d, f), top)
                  for d, _, names in os.walk(top) for f in names)

  def gs_calls(self, *operations) -> list[tuple]:
    return [c for c in self.calls
            if c[0] in operations and c[1].startswith("gs://")]


@contextlib.contextmanager
def fake_gcs(root):
  """Maps gs://BUCKET/KEY to root/BUCKET/KEY for epath and orbax."""
  bucket = FakeBucket(root)

  def one(fn, path, *args, **kwargs):
    bucket.calls.append((fn.__name__, os.fspath(path)))
    return fn(bucket.local(path), *args, **kwargs)

  def two(fn, path, dst, *args, **kwargs):
    bucket.calls.append((fn.__name__, os.fspath(path), os.fspath(dst)))
    return fn(bucket.local(path), bucket.local(dst), *args, **kwargs)

  def open_(fn, path, mode):
    path = os.fspath(path)
    bucket.calls.append(("open", path, mode))
    if path.startswith("gs://"):
      if "a" in mode or "+" in mode:
        raise OSError(f"GCS objects cannot be appended to: {path}")
      if "w" in mode:       # an object needs no folder
        os.makedirs(os.path.dirname(bucket.local(path)), exist_ok=True)
    return fn(bucket.local(path), mode)

  def glob(fn, pattern):
    return [bucket.remote(p) for p in fn(bucket.local(pattern))]

  def walk(fn, top, **kwargs):
    for directory, folders, names in fn(bucket.local(top), **kwargs):
      yield bucket.remote(directory), folders, names

  def kvstore(path):
    name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": os.path.join(bucket.root, name, key)}

  with contextlib.ExitStack() as stack:
    stack.enter_context(epath_testing.mock_epath(
        open=open_, exists=one, isdir=one, listdir=one, makedirs=one,
        mkdir=one, remove=one, rmtree=one, stat=one, rename=two, replace=two,
        copy=two, glob=glob, walk=walk))
    stack.enter_context(pytest.MonkeyPatch.context()).setattr(
        gcs_utils, "get_kvstore_for_gcs", kvstore)
    stack.enter_context(pytest.MonkeyPatch.context()).setattr(
        gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    yield bucket


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """A fake GCS rooted in tmp_path/gcs; the test runs in an empty tmp_path/cwd
  (a path mistaken for a local one would show up there as `gs:/...`)."""
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  with fake_gcs(tmp_path / "gcs") as fake:
    yield fake
  assert os.listdir(tmp_path / "cwd") == []


def run_command(name: str, *argv) -> None:
  with command_modules.imported(name) as module:
    with pytest.raises(SystemExit) as exit_info:
      commands.run(module.main, argv=[f"attractor_jax.{name}", *argv])
  assert exit_info.value.code in (None, 0)


def gcs_config(total_steps):
  config = tiny_config(total_steps)
  config.solve.max_iter = 2     # a shorter depth sweep: T = 0, 1, 2
  return config


def test_a_run_on_gcs_writes_every_file_to_the_bucket(bucket, capsys):
  summary = trainer.train_and_evaluate(gcs_config(2), WORKDIR)
  assert summary["step"] == 2
  # Resuming reads the bucket back: the checkpoint, the tokenizer, the
  # config and metrics.jsonl (an object, rewritten whole).
  config = gcs_config(4)
  config.sample.num_tokens = 4
  summary = trainer.train_and_evaluate(config, WORKDIR)
  assert summary["start_step"] == 2 and summary["step"] == 4
  assert summary["last_word"]["words"] > 0
  # evaluate and generate, as `python -m attractor_jax.evaluate
  # --workdir=gs://bucket/run` runs them (evaluate writes eval/).
  capsys.readouterr()
  run_command("evaluate", f"--workdir={WORKDIR}", "--eval_batches=1")
  assert "step 4: validation loss" in capsys.readouterr().out
  run_command("generate", f"--workdir={WORKDIR}", "--prompt=ab",
              "--num_tokens=3")
  assert capsys.readouterr().out.strip()

  files = bucket.files("bucket/run")
  # Each run held the lease on the workdir and removed it at the end.
  assert bucket.gs_calls("open").count(("open", WORKDIR + "/.lock", "w")) >= 2
  assert ".lock" not in files
  for name in ("config.json", "tokenizer.model", "metrics.jsonl",
               "sample.txt", "eval/depth_sweep.json", "eval/depth_sweep.txt",
               "eval/depth_sweep.png", "eval/depth_sweep_exact.json",
               "eval/last_word.json",
               "checkpoints/2/commit_success.txt",
               "checkpoints/4/commit_success.txt"):
    assert name in files, files
  assert sum(f.startswith("tensorboard/events.out.tfevents.")
             for f in files) == 2          # one per run
  assert bucket.files("") == ["bucket/run/" + f for f in files]

  # Object-store rules: nothing appended to (the fake refuses it) or renamed,
  # nothing outside the workdir.
  assert not bucket.gs_calls("rename", "replace")
  assert all(c[1].startswith(WORKDIR + "/") for c in bucket.gs_calls("open"))

  # What was written reads back through epath.
  assert workdir_lib.load_config(WORKDIR).total_steps == 4
  logged = metrics.read_jsonl(WORKDIR + "/metrics.jsonl")
  assert [r["step"] for r in logged if "loss" in r] == [2, 4]
  assert [s for s, _ in metrics.read_event_scalars(
      WORKDIR + "/tensorboard")["loss"]] == [2, 4]
  assert (epath.Path(WORKDIR) / "sample.txt").read_text() == summary["sample"]
  rows = evaluation.read_depth_sweep(WORKDIR + "/eval/depth_sweep.json")
  assert [row["T"] for row in rows] == [0, 1, 2]


def test_a_second_trainer_on_the_same_bucket_workdir_is_refused(
    bucket, monkeypatch):
  monkeypatch.setattr(remote_lock, "LEASE_S", 2.0)
  monkeypatch.setattr(remote_lock, "SETTLE_S", 0.05)
  with run_guards.WorkdirLock(WORKDIR):
    with pytest.raises(run_guards.WorkdirLockedError,
                       match=f"is running in {WORKDIR}"):
      trainer.train_and_evaluate(gcs_config(2), WORKDIR)
    assert bucket.files("bucket/run") == [".lock"]     # nothing written
  assert bucket.files("bucket/run") == []


def test_metric_writer_rewrites_the_object_on_resume(bucket):
  path = epath.Path("gs://bucket/m/metrics.jsonl")
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                          for s in (1, 2, 3)))
  clock = iter(range(0, 1000, 10)).__next__
  with metrics.MetricWriter("gs://bucket/m", resume_step=2, sync_secs=30,
                            clock=clock) as writer:
    writer.write_scalars(3, {"loss": 2.0})     # uploaded: the first write
    writer.write_scalars(4, {"loss": 2.0})     # held back: < sync_secs
    assert [r["step"] for r in metrics.read_jsonl(path)] == [1, 2, 3]
  assert [(r["step"], r["loss"]) for r in metrics.read_jsonl(path)] == [
      (1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
  assert bucket.files("bucket/m")[0] == "metrics.jsonl"
  events = [f for f in bucket.files("bucket/m") if "tfevents" in f]
  assert len(events) == 1
  assert metrics.read_event_scalars("gs://bucket/m/tensorboard") == {
      "loss": [(3, 2.0), (4, 2.0)]}


def test_bad_gcs_workdirs_are_clear_errors(bucket):
  with pytest.raises(errors.MissingPathError, match="gs://bucket/none"):
    workdir_lib.load_config("gs://bucket/none")
  with pytest.raises(errors.MissingPathError,
                     match="No checkpoint in gs://bucket/none/checkpoints"):
    workdir_lib.check_checkpoint_exists("gs://bucket/none")
  with pytest.raises(errors.MissingPathError, match="does not exist"):
    data_lib.load_tokenizer("gs://bucket/none/tokenizer.model")
  epath.Path("gs://bucket/object").write_text("not a folder")
  with pytest.raises(errors.ConfigError, match="is a file"):
    lm_checks.validate_data(tiny_config(), "gs://bucket/object")


def test_a_tokenizer_reads_from_gcs_as_from_a_file(bucket, tmp_path):
  local = data_lib.get_or_train_tokenizer(
      tmp_path / "local", data_lib.builtin_corpus()[:50], 400)
  remote = data_lib.get_or_train_tokenizer(
      "gs://bucket/tok", data_lib.builtin_corpus()[:50], 400)
  assert bucket.files("bucket/tok") == ["tokenizer.model"]
  assert (epath.Path("gs://bucket/tok/tokenizer.model").read_bytes()
          == local.path.read_bytes())
  assert str(remote.path) == "gs://bucket/tok/tokenizer.model"
  text = "ROMEO: a test\n  of spaces"
  assert remote.encode(text) == local.encode(text)
  again = data_lib.get_or_train_tokenizer("gs://bucket/tok", None, 400)
  assert again.encode(text) == local.encode(text)
  copied = data_lib.get_or_train_tokenizer(
      "gs://bucket/copy", None, 400, model_file=local.path)
  assert copied.encode(text) == local.encode(text)


def test_text_data_reads_from_gcs_as_from_a_folder(bucket, tmp_path):
  documents = data_lib.builtin_corpus()[:40]
  local = tmp_path / "corpus"
  for i, document in enumerate(documents):
    for root in (local, epath.Path("gs://bucket/corpus")):
      (root / f"part{i // 10}" / f"{i:02d}.txt").parent.mkdir(
          parents=True, exist_ok=True)
      (root / f"part{i // 10}" / f"{i:02d}.txt").write_text(document)
  remote = data_lib.text_file_documents("gs://bucket/corpus")
  assert remote == data_lib.text_file_documents(local)
  assert len(remote) >= len(documents)
  config = tiny_config()
  config.data.source, config.data.path = "text", "gs://bucket/corpus"
  lm_checks.validate_data(config)                  # the path exists
  assert lm_data.load_documents(config.data) == remote
  config.data.path = "gs://bucket/none"
  with pytest.raises(errors.MissingPathError, match="gs://bucket/none"):
    lm_checks.validate_data(config)
