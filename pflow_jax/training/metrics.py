"""Metric writing on process 0: TensorBoard event files (tensorboardX, no
TensorFlow) and `metrics.jsonl`, one JSON line per logged step."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np


class MetricWriter:
  """Scalars to `workdir/tb` and `workdir/metrics.jsonl`; a no-op off process 0."""

  def __init__(self, workdir: str):
    self._writer = None
    self._jsonl = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # imported lazily: process 0 only
      self._writer = SummaryWriter(os.path.join(workdir, 'tb'))
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      self._writer.add_scalar(name, float(value), step)
    self._writer.flush()
    self._jsonl.write(json.dumps({'step': step, **{k: float(v) for k, v in values.items()}})
                      + '\n')
    self._jsonl.flush()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, C]."""
    if self._writer is not None:
      self._writer.add_image(name, image, step, dataformats='HWC')
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._jsonl.close()
