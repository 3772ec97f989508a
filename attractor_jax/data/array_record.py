"""ArrayRecord files for corpora too large for memory.

One record per document, in one of two kinds:

* "text": the document as UTF-8 bytes;
* "tokens": the token ids as little-endian int32 bytes (tokenize once, then
  train from the token files without touching the tokenizer again).

Files are written with `group_size:1` so that every record can be read by
index cheaply, which grain's random-access shuffling needs. A corpus may span
several files (shards); they read as one source in the given order.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence

from array_record.python import array_record_module
import grain
import numpy as np

from attractor_jax import errors

ARRAY_RECORD_SUFFIX = ".array_record"
TOKEN_DTYPE = np.dtype("<i4")
RECORD_KINDS = ("text", "tokens")
_LENGTH_READ_CHUNK = 4096  # Records per batched read.


def _encode_record(record) -> tuple[str, bytes]:
  if isinstance(record, str):
    return "text", record.encode("utf-8")
  tokens = np.asarray(record)
  if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError("ArrayRecord records must be str or 1-D integer arrays, "
                     f"got dtype {tokens.dtype} and shape {tokens.shape}")
  return "tokens", tokens.astype(TOKEN_DTYPE).tobytes()


def write_array_record(records: Iterable[str | Sequence[int] | np.ndarray],
                       path: str | os.PathLike) -> int:
  """Writes documents (all `str`) or token arrays (all int) to one file.

  Args:
    records: the documents, streamed; one kind only.
    path: the file to write (parent folders are created).

  Returns:
    The number of records written.
  """
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  count, first_kind = 0, None
  try:
    for record in records:
      kind, data = _encode_record(record)
      if first_kind is None:
        first_kind = kind
      elif kind != first_kind:
        raise ValueError(f"Record {count} is {kind} but earlier records are "
                         f"{first_kind}; one file holds one kind")
      writer.write(data)
      count += 1
  except BaseException:
    writer.close()
    path.unlink(missing_ok=True)  # Leave no partial corpus behind.
    raise
  writer.close()
  return count


def array_record_paths(path: str | os.PathLike | Sequence[str | os.PathLike]
                       ) -> list[pathlib.Path]:
  """Resolves a file, a folder of `*.array_record` files, or a list of files.

  Raises:
    FileNotFoundError: a path does not exist.
    ValueError: a folder without ArrayRecord files.
  """
  if isinstance(path, (str, os.PathLike)):
    path = pathlib.Path(path).expanduser()
    if not path.exists():
      raise errors.MissingPathError(
          f"ArrayRecord path does not exist: '{path}'")
    if not path.is_dir():
      return [path]
    files = sorted(path.glob(f"*{ARRAY_RECORD_SUFFIX}*"))
    if not files:
      raise errors.DataError(f"Folder '{path}' holds no "
                             f"'*{ARRAY_RECORD_SUFFIX}*' files")
    return files
  files = [pathlib.Path(p).expanduser() for p in path]
  missing = [str(f) for f in files if not f.is_file()]
  if missing:
    raise errors.MissingPathError(
        f"ArrayRecord files do not exist: {missing}")
  if not files:
    raise ValueError("No ArrayRecord files given")
  return files


class ArrayRecordDocuments:
  """Random-access documents read through `grain.sources.ArrayRecordDataSource`.

  `[i]` returns a `str` ("text" kind) or an int32 array ("tokens" kind); it
  implements grain's `RandomAccessDataSource` protocol.
  """

  def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike],
               kind: str = "text"):
    """Opens the files.

    Args:
      path: a file, a folder of `*.array_record` files, or a list of files.
      kind: "text" or "tokens", as written.
    """
    if kind not in RECORD_KINDS:
      raise ValueError(f"kind must be one of {RECORD_KINDS}, got {kind!r}")
    self.paths = array_record_paths(path)
    self.kind = kind
    try:
      self._source = grain.sources.ArrayRecordDataSource(
          [str(p) for p in self.paths])
    except RuntimeError as error:
      raise errors.DataError(
          f"Cannot read {[str(p) for p in self.paths]} as ArrayRecord files "
          f"({error}); write them with write_array_record, or use "
          "data.source='text' for text files") from error

  def __len__(self) -> int:
    return len(self._source)

  def _decode(self, data: bytes):
    if self.kind == "text":
      return data.decode("utf-8")
    return np.frombuffer(data, dtype=TOKEN_DTYPE).astype(np.int32)

  def __getitem__(self, index: int):
    return self._decode(self._source[int(index)])

  def document_lengths(self) -> np.ndarray:
    """Token counts of all documents ("tokens" kind), without decoding them."""
    if self.kind != "tokens":
      raise ValueError("document_lengths needs kind='tokens'")
    lengths = []
    for start in range(0, len(self), _LENGTH_READ_CHUNK):
      indices = range(start, min(start + _LENGTH_READ_CHUNK, len(self)))
      lengths.extend(len(data) // TOKEN_DTYPE.itemsize
                     for data in self._source.__getitems__(list(indices)))
    return np.asarray(lengths, dtype=np.int64)

  def __repr__(self) -> str:
    return (f"ArrayRecordDocuments({len(self)} {self.kind} records in "
            f"{len(self.paths)} file(s))")
