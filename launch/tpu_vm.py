#!/usr/bin/env python3
"""Train on a Cloud TPU VM, one host or a pod slice, with `gcloud`.

    launch/tpu_vm.py --dry-run                      # print every command
    launch/tpu_vm.py --project=P --workdir=gs://B/run all
    launch/tpu_vm.py --accelerator-type=v4-32 --project=P \\
        --workdir=gs://B/run run -- --config.optimizer.lr=3e-4

Steps (the positional argument; default `all`):
  create  gcloud compute tpus tpu-vm create (runtime version from the type)
  setup   copy the code to every worker (a `git archive` of this checkout, or
          `git clone` of --git-url) and `pip install -U jax[tpu]`, `-e .[gcs]`
  run     start `python3 -m attractor_jax.train` on ALL workers at once, in
          the background, each writing its own log file; then stream worker
          --log-worker's log until training ends (its exit status is ours)
  logs    stream that log again (after --detach, or a dropped connection)
  delete  gcloud compute tpus tpu-vm delete --quiet
  all     create, setup, run, delete; delete is attempted even when setup or
          run fail (not when create fails: the name may be someone else's)

JAX finds the other workers of a pod slice by itself, so the train command
gets no --coordinator_address/--num_processes/--process_id. A pod slice
needs a workdir every worker reaches: gs://BUCKET/PATH. Arguments after `--`
are passed to the train command. Bad input exits with status 2, a failed
command with 1 (docs/launching.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import sys
import tempfile
from typing import Optional, Sequence

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))
from launch import common  # pylint: disable=g-import-not-at-top

STEPS = ("all", "create", "setup", "run", "logs", "delete")
PROJECT_PLACEHOLDER = "YOUR_PROJECT"
BUCKET_PLACEHOLDER = "YOUR_BUCKET"
ARCHIVE_NAME = "attractor-jax-src.tar.gz"
LOG_NAME = "attractor-train.log"
PID_NAME = "attractor-train.pid"
STATUS_NAME = "attractor-train.status"

# family: (the number counts chips rather than TensorCores, runtime version
# for JAX; cloud.google.com/tpu/docs/runtimes).
FAMILIES = {
    "v2": (False, "tpu-ubuntu2204-base"),
    "v3": (False, "tpu-ubuntu2204-base"),
    "v4": (False, "tpu-ubuntu2204-base"),
    "v5p": (False, "v2-alpha-tpuv5"),
    "v5litepod": (True, "v2-alpha-tpuv5-lite"),
    "v6e": (True, "v2-alpha-tpuv6e"),
}
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A TPU accelerator type such as v4-8, v4-32 or v5litepod-64."""
  name: str
  family: str
  count: int           # TensorCores (v2-v5p) or chips (v5litepod, v6e)
  hosts: int           # TPU VM workers (v5litepod/v6e: at most)
  runtime_version: str

  @property
  def is_pod(self) -> bool:
    """More than one worker: a pod slice."""
    return self.hosts > 1


def parse_accelerator(name: str) -> Accelerator:
  """`name` as an Accelerator.

  v2/v3/v4/v5p counts are TensorCores, 8 per worker; v5litepod/v6e counts
  are chips, up to 8 on a single worker, and `hosts` counts 4-chip workers
  above that (an upper bound, used only to check --log-worker).

  Raises:
    common.UsageError: not FAMILY-COUNT with a known family and a count
      that family has.
  """
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip())
  if not match or match.group(1) not in FAMILIES:
    raise common.UsageError(
        f"unknown accelerator type {name!r}: write FAMILY-COUNT with FAMILY "
        f"one of {', '.join(FAMILIES)} (e.g. v4-8, v4-32, v5litepod-64)")
  family, count = match.group(1), int(match.group(2))
  counts_chips, runtime_version = FAMILIES[family]
  if counts_chips:
    if count < 1 or (count > 8 and count % 4):
      raise common.UsageError(
          f"accelerator type {name!r}: {family} takes 1, 4, 8 or a multiple "
          "of 4 chips above 8 (e.g. v5litepod-8, v5litepod-64)")
    hosts = 1 if count <= 8 else count // 4
  else:
    if count < 8 or count % 8:
      raise common.UsageError(
          f"accelerator type {name!r}: {family} counts TensorCores, a "
          f"multiple of 8 (e.g. {family}-8, {family}-32)")
    hosts = count // 8
  return Accelerator(f"{family}-{count}", family, count, hosts,
                     runtime_version)


def build_parser() -> argparse.ArgumentParser:
  """The launcher's flags (train flags come after `--`, not here)."""
  parser = argparse.ArgumentParser(
      prog="launch/tpu_vm.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Train flags go after `--`. See docs/launching.md.")
  parser.add_argument("step", nargs="?", default="all", choices=STEPS,
                      help="what to do (default: all)")
  common.add_common_flags(parser)
  parser.add_argument("--name", default="attractor-tpu",
                      help="TPU VM name (default: %(default)s)")
  parser.add_argument("--project", default=PROJECT_PLACEHOLDER,
                      help="Google Cloud project (required to run)")
  parser.add_argument("--zone", default="us-central2-b",
                      help="zone with the TPU type (default: %(default)s)")
  parser.add_argument("--accelerator-type", default="v4-8",
                      help="v4-8, v5litepod-8 (one host); v4-32, "
                      "v5litepod-64 (pod slices) ... (default: %(default)s)")
  parser.add_argument("--runtime-version", default=None,
                      help="TPU software version (default: the one for JAX "
                      "on this TPU family)")
  parser.add_argument("--spot", action="store_true",
                      help="create a Spot TPU VM (cheaper, preemptible)")
  parser.add_argument("--workdir", default=None,
                      help="train --workdir; gs://... for a pod slice "
                      f"(default: gs://{BUCKET_PLACEHOLDER}/attractor-runs/"
                      "VARIANT)")
  parser.add_argument("--git-url", default=None,
                      help="clone this repository on the workers instead of "
                      "copying a git archive of this checkout")
  parser.add_argument("--git-ref", default="HEAD",
                      help="commit, branch or tag to archive or check out "
                      "(default: %(default)s; uncommitted changes are not "
                      "copied)")
  parser.add_argument("--remote-dir", default="attractor-jax",
                      help="code directory on each worker, under $HOME "
                      "(default: %(default)s)")
  parser.add_argument("--jax-package", default="jax[tpu]",
                      help="pip requirement for JAX (default: %(default)s)")
  parser.add_argument("--log-worker", default="0",
                      help="worker whose log run/logs stream, or 'all' "
                      "(default: %(default)s)")
  parser.add_argument("--detach", action="store_true",
                      help="run: start training and return (see `logs`)")
  return parser


def default_workdir(config: str) -> str:
  """gs://YOUR_BUCKET/attractor-runs/VARIANT for --config=FILE:VARIANT."""
  variant = config.split(":", 1)[1] if ":" in config else "default"
  return f"gs://{BUCKET_PLACEHOLDER}/attractor-runs/{variant}"


def check_args(args: argparse.Namespace, accelerator: Accelerator) -> None:
  """Raises common.UsageError for input gcloud or the run would reject."""
  if not _NAME.match(args.name):
    raise common.UsageError(
        f"--name={args.name!r}: a TPU name is lowercase letters, digits and "
        "hyphens, starting with a letter (e.g. attractor-tpu)")
  if args.log_worker != "all" and not (
      args.log_worker.isdigit() and int(args.log_worker) < accelerator.hosts):
    raise common.UsageError(
        f"--log-worker={args.log_worker!r}: pass 'all' or a worker in "
        f"0..{accelerator.hosts - 1} ({accelerator.name} has "
        f"{accelerator.hosts})")
  if args.step == "all" and args.detach:
    raise common.UsageError("--detach with `all` would delete the TPU VM "
                            "while it trains: run the steps one by one")
  if args.step in ("run", "all") and not args.workdir.startswith("gs://"):
    if accelerator.is_pod:
      raise common.UsageError(
          f"--workdir={args.workdir!r}: a pod slice ({accelerator.name}, "
          f"{accelerator.hosts} workers) needs a workdir every worker "
          "reaches: --workdir=gs://BUCKET/PATH")
    if args.step == "all":
      raise common.UsageError(
          f"--workdir={args.workdir!r}: `all` deletes the TPU VM and its "
          "disk after training: --workdir=gs://BUCKET/PATH keeps the "
          "checkpoints")
  if args.dry_run:
    return
  if args.project == PROJECT_PLACEHOLDER:
    raise common.UsageError("pass --project=YOUR_GCP_PROJECT (the default is "
                            "a placeholder for --dry-run)")
  if args.step in ("run", "all") and BUCKET_PLACEHOLDER in args.workdir:
    raise common.UsageError(f"--workdir={args.workdir}: replace "
                            f"{BUCKET_PLACEHOLDER} with your bucket")


def gcloud(verb: str, args: argparse.Namespace, *rest: str) -> list[str]:
  """`gcloud compute tpus tpu-vm VERB NAME --zone --project REST...`."""
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name,
          f"--zone={args.zone}", f"--project={args.project}", *rest]


def create_commands(args, accelerator: Accelerator) -> list[list[str]]:
  """The create step."""
  version = args.runtime_version or accelerator.runtime_version
  command = gcloud("create", args, f"--accelerator-type={accelerator.name}",
                   f"--version={version}")
  return [command + (["--spot"] if args.spot else [])]


def setup_commands(args) -> list[list[str]]:
  """The setup step: the code onto every worker, then pip installs."""
  q = common.shell_word
  directory, python = q(args.remote_dir), q(args.python)
  install = (f"cd {directory} && {python} -m pip install -U "
             f"{q(args.jax_package)} && {python} -m pip install -e "
             f"{q('.[gcs]')}")   # gcs: the gs:// workdir's clients
  if args.git_url:
    fetch = (f"(test -d {directory}/.git || git clone --quiet "
             f"{q(args.git_url)} {directory}) && git -C {directory} fetch "
             f"--quiet origin {q(args.git_ref)} && git -C {directory} "
             "checkout --quiet --detach FETCH_HEAD")
    return [gcloud("ssh", args, "--worker=all", "--command",
                   f"{fetch} && {install}")]
  archive = str(pathlib.Path(tempfile.gettempdir()) /
                f"{args.name}-{ARCHIVE_NAME}")
  unpack = (f"mkdir -p {directory} && tar -xzf {ARCHIVE_NAME} -C "
            f"{directory}")
  return [
      ["git", "-C", str(common.REPO_ROOT), "archive", "--format=tar.gz",
       f"--output={archive}", args.git_ref],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
       f"{args.name}:{ARCHIVE_NAME}", "--worker=all", f"--zone={args.zone}",
       f"--project={args.project}"],
      gcloud("ssh", args, "--worker=all", "--command",
             f"{unpack} && {install}"),
  ]


def start_script(args, extra: Sequence[str]) -> str:
  """Shell run on every worker: training in the background, its output in
  LOG_NAME, the pid of the shell that waits for it in PID_NAME and, once it
  ends, its exit status in STATUS_NAME (all in the code directory). SIGHUP
  is ignored, so the run outlives the ssh session."""
  train = common.train_command(args.config, args.workdir, extra, args.python)
  train = " ".join(common.shell_word(word) for word in train)
  return (f"cd {common.shell_word(args.remote_dir)} || exit 1; "
          f"rm -f {STATUS_NAME}; "
          f"{{ trap \"\" HUP; {train}; echo $? > {STATUS_NAME}; }} "
          f"> {LOG_NAME} 2>&1 < /dev/null & echo $! > {PID_NAME}")


def stream_script(args) -> str:
  """Shell that prints the log until training ends, then exits with its
  status (1 if it left none: killed, or never started)."""
  return (f"cd {common.shell_word(args.remote_dir)} || exit 1; "
          f"tail -n +1 -f --pid=\"$(cat {PID_NAME})\" {LOG_NAME}; "
          f"exit \"$(cat {STATUS_NAME} 2>/dev/null || echo 1)\"")


def run_commands(args, extra: Sequence[str]) -> list[list[str]]:
  """The run step: start on all workers, then (unless --detach) stream."""
  start = gcloud("ssh", args, "--worker=all",
                 "--command", start_script(args, extra))
  return [start] if args.detach else [start, logs_command(args)]


def logs_command(args) -> list[str]:
  """The logs step."""
  return gcloud("ssh", args, f"--worker={args.log_worker}",
                "--command", stream_script(args))


def delete_command(args) -> list[str]:
  """The delete step."""
  return gcloud("delete", args, "--quiet")


def run_all(args, accelerator: Accelerator, extra: Sequence[str],
            runner: common.Runner) -> int:
  """create, setup, run, then delete whatever happened after create."""
  for command in create_commands(args, accelerator):
    runner.run(command)
  status = common.EXIT_OK
  try:
    for command in setup_commands(args) + run_commands(args, extra):
      runner.run(command)
  except common.CommandFailed as error:
    print(f"error: {error}\nDeleting {args.name} anyway.", file=sys.stderr)
    status = common.EXIT_FAILED
  except KeyboardInterrupt:
    print(f"\nInterrupted: deleting {args.name}.", file=sys.stderr)
    status = common.EXIT_INTERRUPTED
  runner.run(delete_command(args))
  return status


def run(argv: Sequence[str]) -> int:
  """The launcher on `argv` (without the program name); an exit status."""
  own, extra = common.split_passthrough(argv)
  args = build_parser().parse_args(own)
  accelerator = parse_accelerator(args.accelerator_type)
  if args.workdir is None:
    args.workdir = default_workdir(args.config)
  check_args(args, accelerator)
  runner = common.Runner(args.dry_run)
  if args.step == "all":
    return run_all(args, accelerator, extra, runner)
  commands = {
      "create": lambda: create_commands(args, accelerator),
      "setup": lambda: setup_commands(args),
      "run": lambda: run_commands(args, extra),
      "logs": lambda: [logs_command(args)],
      "delete": lambda: [delete_command(args)],
  }[args.step]()
  for command in commands:
    runner.run(command)
  return common.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: `run` with usage errors as exit 2, failures as 1."""
  return common.main(run, argv)


if __name__ == "__main__":
  sys.exit(main())
