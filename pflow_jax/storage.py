"""Workdir paths on local disk or object storage (gs://, s3://), through `etils.epath`.

epath is the path type orbax itself takes, so checkpoints and every other
workdir file (config.json, metrics, samples, reports, latent statistics) go to
the same place. `os.path.abspath('gs://b/run')` would make a local `./gs:/b/run`
directory instead, which is why workdirs never pass through os.path here.
Data directories (datasets, scorer caches) stay local.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """True for a URL such as gs://bucket/run (anything with a scheme)."""
  return '://' in os.fspath(path)


def path(workdir: str | os.PathLike) -> epath.Path:
  """The workdir as an epath.Path: local paths made absolute, URLs unchanged."""
  text = os.fspath(workdir)
  return epath.Path(text if is_remote(text) else os.path.abspath(text))


def write_text_atomic(dest: epath.Path, text: str) -> None:
  """Writes `dest` through a temporary sibling and a rename, so a reader never sees
  half a file (on object storage the rename is a copy, still all or nothing)."""
  tmp = dest.parent / f'.{dest.name}.tmp{os.getpid()}'
  tmp.write_text(text)
  tmp.replace(dest)


@contextlib.contextmanager
def local_file(dest: epath.Path) -> Iterator[str]:
  """A local filename for writers that need one (video encoders, PNG, TensorBoard).

  Local destinations are written in place; a remote one is written to a
  temporary file and uploaded when the block ends without an error.
  """
  dest.parent.mkdir(parents=True, exist_ok=True)
  if not is_remote(dest):
    yield os.fspath(dest)
    return
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, dest.name)
    yield local
    upload(local, dest)


def upload(local: str, dest: epath.Path) -> None:
  """Copies a local file to `dest` (any scheme)."""
  with open(local, 'rb') as f:
    dest.write_bytes(f.read())
