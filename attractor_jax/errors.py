"""Errors a user can fix, as opposed to bugs.

The command-line entrypoints print a `UserError` as one or two lines (no
traceback) and exit with status 2; anything else is a bug and keeps its
traceback. Library code raises subclasses of the built-in type a caller
would expect (`ValueError`, `FileNotFoundError`), so `except ValueError`
keeps working.
"""


class UserError(Exception):
  """Bad input: a wrong config, path, checkpoint or argument.

  Attributes:
    exit_code: the status the commands exit with (2: bad input; a subclass
      may name another, e.g. a diverged run).
  """

  exit_code = 2


class ConfigError(UserError, ValueError):
  """A config, flag or argument that cannot be used as given."""


class MissingPathError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist (or holds nothing)."""


class DataError(UserError, ValueError):
  """A corpus or tokenizer that cannot be used (empty, binary, too small)."""
