"""Pre-extracted latent datasets: what `python -m pflow_jax.encode` writes and the DiT reads.

A latent dataset is a tfds ArrayRecord directory, read like every other
dataset (`pipeline.load_source`), with one record per clip:
  latents  float32 [T', h, w, C]  the normalised posterior mean: exactly what
                                   the DiT trainer would compute from the clip
                                   (`VAECodec.encode`), so pre-extraction
                                   changes nothing but the cost
  caption  string
  index    int32                   the clip's index in the source split
Only the full-resolution latent is stored: the lower pyramid levels are its
exact 2x2 means (flow.downsample_pyramid), computed in the training step for
a negligible cost, so storing them would add a third to the disk and input
traffic for nothing.

Writing is split into parts of `part_size` records. Each part is written to a
temporary file and renamed when complete, so an interrupted run resumes at
the first missing part, and processes write disjoint parts (part i belongs to
process i % process_count). `finalize` writes the tfds metadata once all
parts exist, and `encoding.json` records how the latents were made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from array_record.python import array_record_module
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from pflow_jax.data import pipeline

DATASET_NAME = 'latents'
SPLITS = ('train', 'test')
INFO_FILE = 'encoding.json'
# What the parts of an unfinished dataset were encoded from (written before the first part).
SOURCE_FILE = 'encoding_source.json'
_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


def features(latent_shape: tuple[int, ...]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'latents': tfds.features.Tensor(shape=tuple(latent_shape), dtype=np.float32),
      'caption': tfds.features.Tensor(shape=(), dtype=np.str_),
      'index': tfds.features.Tensor(shape=(), dtype=np.int32),
  })


def num_parts(num_records: int, part_size: int) -> int:
  return -(-num_records // part_size)


def part_path(out_dir: str, split: str, part: int, total: int) -> str:
  return os.path.join(out_dir, f'{DATASET_NAME}-{split}.array_record-{part:05d}-of-{total:05d}')


def write_part(path: str, feats: tfds.features.FeaturesDict,
               records: Iterable[Mapping[str, Any]]) -> int:
  """Writes records to `path` atomically (temp file + rename); returns how many."""
  tmp = path + '.tmp'
  writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
  count = 0
  for record in records:
    writer.write(feats.serialize_example(record))
    count += 1
  writer.close()
  os.replace(tmp, path)
  return count


def claim(out_dir: str, source: Mapping[str, Any], write: bool = True) -> None:
  """Records what `out_dir`'s parts are encoded from, or, resuming, checks it is the same.

  A resumed encoding with another VAE checkpoint, normalisation, latent shape, part
  size or data would mix latents of two encoders in one dataset: ValueError naming
  the fields, nothing written. write: whether this process writes the record.
  """
  path = os.path.join(out_dir, SOURCE_FILE)
  source = json.loads(json.dumps(dict(source)))  # tuples -> lists, as stored
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    changed = sorted(k for k in set(stored) | set(source) if stored.get(k) != source.get(k))
    if changed:
      details = '; '.join(f'{k}: parts have {stored.get(k)!r}, this run {source.get(k)!r}'
                          for k in changed)
      raise ValueError(f'{out_dir} holds parts of another encoding ({details}); use a new '
                       'output directory, or delete it to encode again')
    return
  if write:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump(source, f, indent=2)
    os.replace(tmp, path)


def finalize(out_dir: str, latent_shape: tuple[int, ...], split_lengths: Mapping[str, int],
             part_size: int, info: Mapping[str, Any]) -> None:
  """Writes the tfds metadata over the complete parts, and the encoding info."""
  split_infos = []
  for split, length in split_lengths.items():
    total = num_parts(length, part_size)
    lengths = [min(part_size, length - i * part_size) for i in range(total)]
    missing = [i for i in range(total) if not os.path.exists(part_path(out_dir, split, i, total))]
    if missing:
      raise FileNotFoundError(f'latent dataset {out_dir}: split {split!r} lacks parts {missing}')
    size = sum(os.path.getsize(part_path(out_dir, split, i, total)) for i in range(total))
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=size))
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir, features=features(latent_shape), split_infos=split_infos,
      filename_template=_TEMPLATE, check_data=False)
  with open(os.path.join(out_dir, INFO_FILE), 'w') as f:
    json.dump(dict(info), f, indent=2)


def read_info(out_dir: str) -> dict[str, Any]:
  path = os.path.join(out_dir, INFO_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {out_dir} is not a finished latent dataset '
                            '(written by `python -m pflow_jax.encode`)')
  with open(path) as f:
    return json.load(f)


def check_compatible(out_dir: str, latent_shape: tuple[int, ...],
                     normalisation: Mapping[str, float] | None) -> None:
  """Raises ValueError unless the dataset's latents have `latent_shape` and were
  normalised with `normalisation` (the codec that will decode the samples)."""
  info = read_info(out_dir)
  if tuple(info['latent_shape']) != tuple(latent_shape):
    raise ValueError(f'latent dataset {out_dir} holds latents of shape '
                     f'{tuple(info["latent_shape"])}, the config expects {tuple(latent_shape)}')
  stored = info.get('vae_normalisation')
  if normalisation is not None and stored is not None and any(
      abs(stored[k] - normalisation[k]) > 1e-6 * max(1.0, abs(stored[k])) for k in stored):
    raise ValueError(f'latent dataset {out_dir} was normalised with {stored}, but the VAE '
                     f'codec now uses {dict(normalisation)}: samples would be decoded wrongly. '
                     'Re-encode it with `python -m pflow_jax.encode`.')


def source_videos_data(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """For a `data` section that reads a latent dataset, the section of the videos its latents
  were encoded from (kept in the dataset's info), at the same batch size; any other section
  as it is."""
  if data.name != DATASET_NAME:
    return data
  source = ml_collections.ConfigDict(read_info(data.latent_dir)['data'])
  source.global_batch_size = data.global_batch_size
  return source


def load(out_dir: str, split: str):
  """Random-access source of one split of a finished latent dataset."""
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; a latent dataset has {SPLITS}')
  read_info(out_dir)
  return pipeline.load_source(out_dir, split)
