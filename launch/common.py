"""What the launchers share: the train command, and running or printing steps.

Every launcher builds its steps as argument lists and hands them to a
`Runner`. With `dry_run` the runner prints each one as a shell-quoted,
copy-pasteable line (`shlex.join`) and runs nothing; otherwise it echoes
`+ COMMAND` on stderr and runs it with `subprocess.run(check=True)`, and a
failure raises `CommandFailed` naming the command. `main` turns
`UsageError` into exit status 2 and `CommandFailed` into 1, each with one
`error: ...` line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Callable, Optional, Sequence, TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_MODULE = "attractor_jax.train"
DEFAULT_CONFIG = "attractor_jax/configs/lm.py:attractor-140m"
HEREDOC_END = "LAUNCH_EOF"


class UsageError(Exception):
  """Bad input to a launcher: printed as `error: ...`, exit status 2."""


class CommandFailed(Exception):
  """A step that exited non-zero (or could not start): exit status 1."""

  def __init__(self, command: Sequence[str], detail: str):
    self.command = list(command)
    super().__init__(f"{detail}: {shlex.join(self.command)}")


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, the train flags after the first `--`).

  `launch/tpu_vm.py run -- --config.optimizer.lr=3e-4` passes
  `--config.optimizer.lr=3e-4` through to `python -m attractor_jax.train`.
  """
  argv = list(argv)
  if "--" in argv:
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]
  return argv, []


def train_command(config: str, workdir: str, extra: Sequence[str] = (),
                  python: str = "python3") -> list[str]:
  """`python -m attractor_jax.train --config=C --workdir=W EXTRA...`.

  The multi-host flags (--coordinator_address, --num_processes,
  --process_id) are left to the caller: on a TPU VM or under SLURM,
  `jax.distributed.initialize()` detects them.
  """
  return [python, "-m", TRAIN_MODULE, f"--config={config}",
          f"--workdir={workdir}", *extra]


def shell_word(value: str) -> str:
  """`value` as one word of a shell script that is itself quoted again.

  Like `shlex.quote`, but double quotes when they suffice ("jax[tpu]"), so
  that quoting the whole script with `shlex.quote` does not nest single
  quotes.
  """
  quoted = shlex.quote(value)
  if quoted == value or any(c in value for c in '"$`\\!'):
    return quoted
  return f'"{value}"'


def add_common_flags(parser: argparse.ArgumentParser) -> None:
  """--dry-run, --config and --python, which every launcher takes."""
  parser.add_argument(
      "--dry-run", action="store_true",
      help="print the commands (one per line, shell-quoted) and run nothing")
  parser.add_argument(
      "--config", default=DEFAULT_CONFIG,
      help="the train command's --config (default: %(default)s)")
  parser.add_argument(
      "--python", default="python3",
      help="the Python that runs the train command (default: %(default)s)")


def heredoc(path: str, text: str) -> str:
  """Shell text that writes `text` to `path` verbatim (a quoted heredoc)."""
  if not text.endswith("\n"):
    text += "\n"
  if HEREDOC_END in text.splitlines():
    raise ValueError(f"text holds the heredoc delimiter {HEREDOC_END}")
  return f"cat > {shlex.quote(path)} <<'{HEREDOC_END}'\n{text}{HEREDOC_END}"


class Runner:
  """Runs the steps, or with `dry_run` prints them and runs nothing."""

  def __init__(self, dry_run: bool, out: Optional[TextIO] = None,
               err: Optional[TextIO] = None):
    self.dry_run = dry_run
    self.out = out or sys.stdout
    self.err = err or sys.stderr

  def _echo(self, line: str) -> None:
    if self.dry_run:
      print(line, file=self.out, flush=True)
    else:
      print(f"+ {line}", file=self.err, flush=True)

  def run(self, command: Sequence[str]) -> None:
    """Runs `command` (no shell), or prints it.

    Raises:
      CommandFailed: it exited non-zero, or its program is not on PATH.
    """
    self._echo(shlex.join(command))
    if not self.dry_run:
      _call(command)

  def capture(self, command: Sequence[str], variable: str) -> str:
    """Runs `command` and returns its stdout, stripped.

    A dry run prints `VARIABLE=$(COMMAND)` and returns `${VARIABLE}`, so the
    lines that use the value can be pasted after it.

    Raises:
      CommandFailed: as `run`.
    """
    if self.dry_run:
      print(f"{variable}=$({shlex.join(command)})", file=self.out, flush=True)
      return "${" + variable + "}"
    self._echo(shlex.join(command))
    return _call(command, stdout=subprocess.PIPE).stdout.strip()

  def write(self, path: str, text: str) -> None:
    """Writes a file, or prints the heredoc that would write it."""
    if self.dry_run:
      print(heredoc(path, text), file=self.out, flush=True)
      return
    try:
      pathlib.Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
      raise UsageError(f"cannot write {path}: {error.strerror}") from error
    print(f"+ wrote {path}", file=self.err, flush=True)

  def echo(self, line: str) -> None:
    """Prints a line that is already shell text (dry run), or nothing."""
    if self.dry_run:
      print(line, file=self.out, flush=True)


def _call(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
  """subprocess.run(check=True, text=True); failures as CommandFailed."""
  try:
    return subprocess.run(list(command), check=True, text=True, **kwargs)
  except subprocess.CalledProcessError as error:
    raise CommandFailed(
        command, f"command failed with exit status {error.returncode}"
    ) from error
  except OSError as error:
    raise CommandFailed(
        command, f"could not run {command[0]!r} ({error.strerror})") from error


def main(run: Callable[[list[str]], int],
         argv: Optional[Sequence[str]] = None) -> int:
  """`run(argv)`'s exit status; UsageError -> 2, CommandFailed -> 1,
  Ctrl-C -> 130."""
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    return run(argv)
  except UsageError as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_USAGE
  except CommandFailed as error:
    print(f"error: {error}", file=sys.stderr)
    return EXIT_FAILED
  except KeyboardInterrupt:
    print("\nInterrupted.", file=sys.stderr)
    return EXIT_INTERRUPTED
  except BrokenPipeError:       # `--dry-run | head`: the reader left
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
