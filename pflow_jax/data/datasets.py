"""The experiment config's `data` section -> a training source and its transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from pflow_jax.data import moving_digits
from pflow_jax.models import text as text_lib


def moving_digits_config(data: ml_collections.ConfigDict) -> moving_digits.MovingDigitsConfig:
  return moving_digits.MovingDigitsConfig(
      image_size=data.image_size, num_frames=data.num_frames, max_digits=data.max_digits,
      train_size=data.train_size, test_size=data.test_size, seed=data.dataset_seed)


def source(config: ml_collections.ConfigDict, split: str):
  """Random-access source of `split`; builds the dataset first when allowed.

  Process 0 builds while the others wait, so parallel writers never race.
  """
  data = config.data
  if data.name != 'moving_digits':
    raise ValueError(f"unknown dataset {data.name!r}; known: 'moving_digits'")
  cfg = moving_digits_config(data)
  if data.build_if_missing:
    if jax.process_index() == 0:
      moving_digits.build_moving_digits(data.data_dir, cfg)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('pflow_jax:build_dataset')
  return moving_digits.load_moving_digits(data.data_dir, cfg, split)


def train_source(config: ml_collections.ConfigDict):
  return source(config, 'train')


def train_transform(config: ml_collections.ConfigDict) -> Callable[[dict[str, Any]], dict]:
  """Record -> model inputs: the uint8 video and the caption's tokens."""
  max_length = config.text.max_length

  def transform(record: dict[str, Any]) -> dict[str, np.ndarray]:
    caption = record['caption']
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    return {'video': np.asarray(record['video']),
            'tokens': text_lib.tokenize([caption], max_length)[0]}

  return transform
