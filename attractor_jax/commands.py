"""Running the command-line entrypoints: bad input is one line, not a traceback.

    _CONFIG = commands.define_config_file("config", DEFAULT_FILE, "...")
    ...
    if __name__ == "__main__":
      commands.run(main)

`run` is `absl.app.run` except for user errors: an `errors.UserError` raised
anywhere, or a flag that absl or ml_collections cannot parse (an unknown flag,
a value of the wrong type, a config file that does not exist, an unknown
config field or variant), is printed on stderr as

    error: <what is wrong>
    <what to do>

and the process exits with status 2 (`EXIT_USER_ERROR`), or the error's own
`exit_code`. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib
from ml_collections.config_flags import config_path

from attractor_jax import errors
from attractor_jax.parallel import distributed

EXIT_USER_ERROR = 2
FLAGS_HINT = "Pass --helpshort to list this command's flags."
MAX_LINE = 500    # longer lines (lists of names) are cut

# Config flags defined here: name -> default file, and the errors their
# definition raised (ml_collections parses the default config and the
# --config.FIELD overrides of sys.argv when the flag is defined, at import).
_CONFIG_DEFAULTS: dict[str, str] = {}
_DEFINE_ERRORS: list[tuple[str, Exception]] = []


def define_config_file(name: str, default: str, help_string: str
                       ) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file` (locked) whose errors `run` reports.

  Without --NAME on the command line, ml_collections loads the default file
  and defines the --NAME.FIELD overrides here, at import time, where an
  unknown field would raise before `run` could catch it. Such an error is
  kept for `run`, and the flag is defined without the overrides.
  """
  _CONFIG_DEFAULTS[name] = default
  try:
    return config_flags.DEFINE_config_file(name, default, help_string,
                                           lock_config=True)
  except Exception as error:  # pylint: disable=broad-except
    _DEFINE_ERRORS.append((name, error))
    return config_flags.DEFINE_config_file(name, default, help_string,
                                           lock_config=True,
                                           sys_argv=sys.argv[:1])


def run(main: Callable[[list[str]], None],
        argv: Optional[Sequence[str]] = None) -> None:
  """`app.run(main)`; a user error prints one or two lines and exits 2.

  Args:
    main: the command's main(argv).
    argv: the command line (default sys.argv). When given, sys.argv is set to
      it for the run, since ml_collections reads config overrides from there.
  """
  saved_argv = sys.argv
  if argv is not None:
    sys.argv = list(argv)
  try:
    if _DEFINE_ERRORS:
      name, error = _DEFINE_ERRORS[0]
      raise _flag_error(error, name, sys.argv) or error
    app.run(main, argv=sys.argv, flags_parser=parse_flags)
  except Exception as error:  # pylint: disable=broad-except
    if not isinstance(error, errors.UserError):
      raise
    exit_with_user_error(error)
  finally:
    sys.argv = saved_argv


def exit_with_user_error(error: Exception) -> None:
  """Prints `error: ...` (one or two lines) on stderr and exits with the
  error's `exit_code` (2 unless a UserError subclass says otherwise)."""
  lines = message_lines(error)
  sys.stderr.write("error: " + "\n".join(lines) + "\n")
  sys.stderr.flush()
  sys.exit(getattr(error, "exit_code", EXIT_USER_ERROR))


def message_lines(error: Exception) -> list[str]:
  """An error's message as at most two lines: what is wrong, what to do.

  A longer message (a list of mismatched fields, say) keeps its last line as
  the second and joins the others into the first.
  """
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return [type(error).__name__]
  if len(lines) > 2:
    lines = [lines[0] + " " + "; ".join(lines[1:-1]), lines[-1]]
  return [line if len(line) <= MAX_LINE else line[:MAX_LINE] + " [...]"
          for line in lines]


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses the flags (absl's `flags_parser`); user errors become ConfigError.

  Raises:
    errors.ConfigError: an unknown flag, a value absl cannot parse, a config
      file that does not load, an unknown config field or variant.
  """
  try:
    remaining = flags.FLAGS(list(argv))
  except Exception as error:  # pylint: disable=broad-except
    converted = _flag_error(error, None, argv)
    if converted is None:
      raise
    raise converted from error
  for name in _CONFIG_DEFAULTS:
    if name not in flags.FLAGS:
      continue
    value = flags.FLAGS[name].value
    if isinstance(value, config_flags_lib._ErrorConfig):  # pylint: disable=protected-access
      load_error = object.__getattribute__(value, "_error")
      raise _config_load_error(name, argv, load_error) from load_error
  return remaining


def _chain(error: BaseException):
  """The error and the ones it was raised from or during, newest first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _flag_error(error: Exception, config_name: Optional[str],
                argv: Sequence[str]) -> Optional[errors.ConfigError]:
  """The ConfigError a flag-parsing error stands for; None for a bug."""
  # The innermost: ml_collections re-raises a config file's error with the
  # traceback in its message.
  user_errors = [e for e in _chain(error) if isinstance(e, errors.UserError)]
  if user_errors:
    return errors.ConfigError("\n".join(message_lines(user_errors[-1])))
  names = [config_name] if config_name else list(_CONFIG_DEFAULTS)
  for link in _chain(error):
    if isinstance(link, OSError) and "Failed loading config file" in str(link):
      return _config_load_error(_flag_in_argv(names, argv) or names[0], argv,
                                link)
  if isinstance(error, (AttributeError, KeyError, IndexError)):
    for name in names:
      unknown = _unknown_override(name, argv)
      if unknown:
        return unknown
    if "get_config" in str(error):
      name = _flag_in_argv(names, argv) or names[0]
      spec = _config_spec(name, argv) or _CONFIG_DEFAULTS.get(name, "")
      return errors.ConfigError(
          f"--{name}={spec}: the config file defines no get_config().\n"
          "Pass a config file with a get_config() function, e.g. "
          f"{_CONFIG_DEFAULTS.get(name, '')}.")
    return None
  if isinstance(error, flags.Error):
    message = str(error)
    if "Traceback (most recent call last)" in message:
      # ml_collections puts the config file's traceback into the message.
      where = message.split(": Error whilst parsing config file", 1)[0]
      where = where[len("flag "):] if where.startswith("flag ") else where
      last = [line for line in message.splitlines() if line.strip()][-1]
      return errors.ConfigError(f"{where}: the config file raised "
                                f"{last.strip()}\nFix the config file.")
    return _flag_value_error(" ".join(message.split()))
  return None


def _flag_value_error(message: str) -> errors.ConfigError:
  """absl's "flag --NAME=VALUE: DETAIL" as what is wrong and what to do."""
  match = re.match(r"^flag --([^=]+)=(.*?): (.*)$", message)
  if not match or match.group(1) not in flags.FLAGS:
    return errors.ConfigError(f"{message}\n{FLAGS_HINT}")
  name, value, detail = match.groups()
  if value == "None" and "must have a value other than None" in detail:
    return errors.ConfigError(f"--{name} is required.\nPass --{name}=VALUE "
                              "(--helpshort lists this command's flags).")
  kind = flags.FLAGS[name].flag_type()
  if re.match(r"(invalid literal|could not convert)", detail):
    detail = f"not a valid {kind}"
  hint = (f"The field's type ({kind}) is fixed by get_config()."
          if "." in name else FLAGS_HINT)
  return errors.ConfigError(f"--{name}={value}: {detail}.\n{hint}")


def _flag_in_argv(names: Sequence[str], argv: Sequence[str]) -> Optional[str]:
  for name in names:
    if _config_spec(name, argv) is not None:
      return name
  return None


def _config_spec(name: str, argv: Sequence[str]) -> Optional[str]:
  """The value of --NAME on the command line (last one wins), or None."""
  spec = None
  for i, arg in enumerate(argv):
    if re.match(rf"^--?{re.escape(name)}=", arg):
      spec = arg.split("=", 1)[1]
    elif re.match(rf"^--?{re.escape(name)}$", arg) and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _config_load_error(name: str, argv: Sequence[str],
                       error: BaseException) -> errors.ConfigError:
  spec = _config_spec(name, argv) or _CONFIG_DEFAULTS.get(name, "")
  path = spec.split(":", 1)[0]
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  reason = lines[-1] if lines else type(error).__name__
  return errors.ConfigError(
      f"--{name}={spec}: cannot load the config file {path!r} ({reason}).\n"
      f"Pass --{name}=FILE[:VARIANT] with an existing config file, e.g. the "
      f"default {_CONFIG_DEFAULTS.get(name, '')}.")


def _unknown_override(name: str, argv: Sequence[str]
                      ) -> Optional[errors.ConfigError]:
  """A ConfigError for the first --NAME.FIELD the config does not have."""
  overrides = []
  for arg in argv:
    match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if match:
      overrides.append(match.group(1))
  if not overrides:
    return None
  spec = _config_spec(name, argv) or _CONFIG_DEFAULTS.get(name)
  try:
    config = config_flags_lib.ConfigFileFlagParser(name).parse(spec)
  except Exception:  # pylint: disable=broad-except
    return None
  for field in overrides:
    try:
      config_path.get_value(field, config)
      continue
    except (AttributeError, KeyError, IndexError, ValueError):
      pass
    parent, _, leaf = field.rpartition(".")
    hint = ""
    try:
      siblings = config_path.get_value(parent, config) if parent else config
      close = difflib.get_close_matches(leaf, [str(k) for k in siblings],
                                        n=1, cutoff=0.6)
      if close:
        hint = f" Did you mean --{name}.{parent + '.' if parent else ''}" \
               f"{close[0]}?"
    except Exception:  # pylint: disable=broad-except
      pass
    return errors.ConfigError(
        f"--{name}.{field}: the config has no field {field!r}.{hint}\n"
        f"Override only fields that get_config() of {spec.split(':')[0]} "
        "defines.")
  return None


def start_command(argv) -> None:
  """Shared start of the train / evaluate / generate commands.

  Rejects stray arguments; unless --verbosity was given, keeps absl's log to
  warnings (orbax logs every checkpoint step at INFO); then starts the
  multi-process runtime if the flags ask for it or a cluster is detected
  (`parallel.distributed`), before anything else touches a device.
  """
  if len(argv) > 1:
    raise errors.ConfigError(
        f"Unexpected arguments {argv[1:]}.\nWrite every flag as "
        "--name=value; pass --helpshort to list the flags.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize_from_flags()
