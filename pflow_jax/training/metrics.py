"""Metric writing on process 0: TensorBoard event files (tensorboardX, no
TensorFlow) and `metrics.jsonl`, one JSON line per logged step.

Local workdirs are appended to in place. Object storage cannot append, so for
a remote workdir (gs://...) the event files are written to a local temporary
directory and uploaded, and metrics.jsonl is rewritten whole, at every flush.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping

import jax
import numpy as np

from pflow_jax import storage


class MetricWriter:
  """Scalars to `workdir/tb` and `workdir/metrics.jsonl`; a no-op off process 0."""

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() != 0:
      return
    from tensorboardX import SummaryWriter  # imported lazily: process 0 only
    root = storage.path(workdir)
    self._tb = root / 'tb'
    self._jsonl_path = root / 'metrics.jsonl'
    self._remote = storage.is_remote(root)
    if self._remote:
      self._local_tb = tempfile.mkdtemp(prefix='pflow_tb_')
      self._lines = (self._jsonl_path.read_text().splitlines(keepends=True)
                     if self._jsonl_path.exists() else [])
      # Uploads replace whole files: a unique name keeps an earlier run's events.
      self._writer = SummaryWriter(self._local_tb, filename_suffix=f'.{uuid.uuid4().hex[:8]}')
    else:
      self._writer = SummaryWriter(os.fspath(self._tb))
      self._jsonl = open(self._jsonl_path, 'a')

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), step)
    line = json.dumps({'step': step, **{k: float(v) for k, v in values.items()}}) + '\n'
    if self._remote:
      self._lines.append(line)
    else:
      self._jsonl.write(line)
    self._flush()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, C]."""
    if self._writer is not None:
      self._writer.add_image(name, image, step, dataformats='HWC')
      self._flush()

  def _flush(self) -> None:
    self._writer.flush()
    if self._remote:
      self._upload()
    else:
      self._jsonl.flush()

  def _upload(self) -> None:
    storage.write_text_atomic(self._jsonl_path, ''.join(self._lines))
    for name in os.listdir(self._local_tb):
      storage.upload(os.path.join(self._local_tb, name), self._tb / name)

  def close(self) -> None:
    if self._writer is None:
      return
    self._writer.close()
    if self._remote:
      self._upload()
      shutil.rmtree(self._local_tb, ignore_errors=True)
    else:
      self._jsonl.close()
    self._writer = None
