"""The experiment config's `data` section -> random-access sources and record transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from pflow_jax import config as config_lib
from pflow_jax.data import latent_dataset, moving_digits, text_embeddings, video_folder
from pflow_jax.models import text as text_lib


def moving_digits_config(data: ml_collections.ConfigDict) -> moving_digits.MovingDigitsConfig:
  return moving_digits.MovingDigitsConfig(
      image_size=data.image_size, num_frames=data.num_frames, max_digits=data.max_digits,
      digit_size=data.digit_size, train_size=data.train_size, test_size=data.test_size,
      seed=data.dataset_seed)


def video_folder_config(data: ml_collections.ConfigDict,
                        split: str = 'train') -> video_folder.VideoFolderConfig:
  """The clips of data.annotations, or of data.test_annotations for a set 'test' split."""
  height, width = config_lib.image_hw(data)
  annotations = data.test_annotations if split == 'test' and data.test_annotations else (
      data.annotations)
  return video_folder.VideoFolderConfig(
      folder=data.folder, annotations=annotations, num_frames=data.num_frames,
      fps=data.fps, height=height, width=width, clips_per_video=data.clips_per_video)


def _build_once(build: Callable[[], Any]) -> None:
  """Runs `build` on process 0 while the others wait, so writers never race."""
  if jax.process_index() == 0:
    build()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('pflow_jax:build_dataset')


def source(config: ml_collections.ConfigDict, split: str):
  """Random-access source of `split` ('train' or 'test'); builds the dataset first when allowed.

  A video folder's 'test' split holds the clips of data.test_annotations, or
  the training clips when that is empty.
  """
  data = config.data
  if data.name == 'moving_digits':
    cfg = moving_digits_config(data)
    if data.build_if_missing:
      _build_once(lambda: moving_digits.build_moving_digits(data.data_dir, cfg))
    return moving_digits.load_moving_digits(data.data_dir, cfg, split)
  if data.name == 'video_folder':
    cfg = video_folder_config(data, split)
    if data.build_if_missing:
      _build_once(lambda: video_folder.build_video_folder(data.data_dir, cfg))
    return video_folder.load_video_folder(data.data_dir, cfg, 'train')
  if data.name == 'latents':
    return latent_dataset.load(data.latent_dir, split)
  raise ValueError(f'unknown data.name {data.name!r}; known: {config_lib.DATASETS}')


def train_source(config: ml_collections.ConfigDict):
  return source(config, 'train')


def caption_of(record: dict[str, Any]) -> str:
  caption = record['caption']
  return caption.decode() if isinstance(caption, bytes) else str(caption)


def train_transform(config: ml_collections.ConfigDict) -> Callable[[dict[str, Any]], dict]:
  """Record -> model inputs: uint8 'video' (or stored 'latents') and the caption's text:
  'tokens' for the toy encoder, or its precomputed embeddings (text_*, null_text_*) from
  the file text.embeddings."""
  max_length = config.text.max_length
  key = 'latents' if config.data.name == 'latents' else 'video'
  if config.text.encoder == 'precomputed':
    if not config.text.embeddings:
      raise ValueError("text.encoder 'precomputed' needs text.embeddings: the captions' "
                       'embeddings file (python -m pflow_jax.embed_text)')
    lookup = text_embeddings.CaptionLookup(config.text.embeddings, config.model)
    return lambda record: {key: np.asarray(record[key]), **lookup(caption_of(record))}

  def transform(record: dict[str, Any]) -> dict[str, np.ndarray]:
    return {key: np.asarray(record[key]),
            'tokens': text_lib.tokenize([caption_of(record)], max_length)[0]}

  return transform
