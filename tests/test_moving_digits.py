"""Moving-digits dataset: content (digits, motion, captions), determinism, splits, tfds build."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from pflow_jax.data import moving_digits as md

TINY = md.MovingDigitsConfig(image_size=32, num_frames=4, train_size=16, test_size=8)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('digits'))
  return data_dir, md.build_moving_digits(data_dir, TINY)


def _locate(frame, digit):
  """Top-left (y, x) of the only digit on an otherwise black frame; checks the pixels."""
  rows, cols = np.nonzero(frame)
  drows, dcols = np.nonzero(digit)
  y, x = rows.min() - drows.min(), cols.min() - dcols.min()
  assert 0 <= y <= frame.shape[0] - md.DIGIT_SIZE and 0 <= x <= frame.shape[1] - md.DIGIT_SIZE
  canvas = np.zeros_like(frame)
  canvas[y:y + md.DIGIT_SIZE, x:x + md.DIGIT_SIZE] = digit
  np.testing.assert_array_equal(frame, canvas)
  return np.array([y, x])


def _all_placements(digit, size):
  """The digit pasted on a black size x size canvas at every position: [P, size, size]."""
  span = size - md.DIGIT_SIZE + 1
  out = np.zeros((span, span, size, size), np.uint8)
  for y in range(span):
    for x in range(span):
      out[y, x, y:y + md.DIGIT_SIZE, x:x + md.DIGIT_SIZE] = digit
  return out.reshape(-1, size, size)


def test_mnist_source_is_real_digits():
  images, labels = md.mnist_digits()
  assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  # Real handwriting: a white-on-black stroke image, not noise or a constant.
  assert images.max() == 255 and 0.05 < (images > 0).mean() < 0.35
  assert (images[:, 0, :] == 0).all()  # MNIST's empty border row


def test_train_and_test_draw_from_disjoint_digits():
  train = md.source_pool('train', TINY.test_fraction)
  test = md.source_pool('test', TINY.test_fraction)
  assert not set(train) & set(test)
  assert len(train) + len(test) == 5000
  _, labels = md.mnist_digits()
  np.testing.assert_array_equal(np.bincount(labels[test]), [50] * 10)
  for split, pool in (('train', train), ('test', test)):
    for i in range(TINY.split_size(split)):
      sources = md.generate_example(i, TINY, split)['source_index']
      assert set(sources[sources >= 0]) <= set(pool)


def test_single_digit_motion_bounces_and_matches_caption():
  cfg = md.MovingDigitsConfig(image_size=40, num_frames=12, max_digits=1, train_size=40,
                              test_size=1)
  images, labels = md.mnist_digits()
  limit = cfg.image_size - md.DIGIT_SIZE
  bounced = 0
  for i in range(cfg.train_size):
    ex = md.generate_example(i, cfg, 'train')
    source, direction = ex['source_index'][0], ex['directions'][0]
    assert ex['digits'][0] == labels[source]
    assert ex['caption'] == f'a {labels[source]} moving {md.DIRECTIONS[direction]}'
    video = ex['video'][..., 0]
    assert ex['video'].shape == (12, 40, 40, 1) and ex['video'].dtype == np.uint8
    pos = np.stack([_locate(f, images[source]) for f in video])  # (y, x) per frame
    axis = 1 if md.DIRECTIONS[direction] in ('left', 'right') else 0
    sign = 1 if md.DIRECTIONS[direction] in ('right', 'down') else -1
    # Only the captioned axis moves, and the first step goes the captioned way.
    assert (pos[:, 1 - axis] == pos[0, 1 - axis]).all()
    steps = np.diff(pos[:, axis])
    assert steps[0] * sign >= 1
    # Speed in [min_speed, max_speed] (up to rounding); a bounce happens at a wall.
    assert cfg.min_speed - 1 <= abs(steps[0]) and np.abs(steps).max() <= cfg.max_speed + 1
    turns = np.flatnonzero(np.sign(steps) != sign)
    if turns.size:
      bounced += 1
      p = pos[turns[0], axis]
      assert min(p, limit - p) <= cfg.max_speed + 1
  assert bounced > 5


def test_digits_combine_with_max_and_captions_name_them():
  images, labels = md.mnist_digits()
  counts = []
  for i in range(TINY.train_size):
    ex = md.generate_example(i, TINY, 'train')
    n = int((ex['digits'] >= 0).sum())
    counts.append(n)
    np.testing.assert_array_equal(ex['digits'][n:], -1)
    np.testing.assert_array_equal(ex['directions'][n:], -1)
    np.testing.assert_array_equal(ex['digits'][:n], labels[ex['source_index'][:n]])
    words = [f'a {d} moving {md.DIRECTIONS[k]}' for d, k in zip(ex['digits'][:n],
                                                                  ex['directions'][:n])]
    assert ex['caption'] == ' and '.join(words)
    pasted = [_all_placements(images[k], TINY.image_size) for k in ex['source_index'][:n]]
    for frame in ex['video'][..., 0]:
      if n == 1:
        assert (pasted[0] == frame).all(axis=(1, 2)).any()
      else:  # some pair of placements, combined with max, gives the frame exactly
        both = np.maximum(pasted[0][:, None], pasted[1][None])
        assert (both == frame).all(axis=(2, 3)).any()
  assert set(counts) == {1, 2}


def test_examples_are_deterministic_and_seeded():
  a = md.generate_example(3, TINY, 'train')
  b = md.generate_example(3, TINY, 'train')
  c = md.generate_example(3, dataclasses.replace(TINY, seed=1), 'train')
  d = md.generate_example(3, TINY, 'test')
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['video'], c['video'])
  assert not np.array_equal(a['video'], d['video'])


def test_every_parameter_is_part_of_the_dataset_identity():
  names = {TINY.name}
  for field in dataclasses.fields(md.MovingDigitsConfig):
    value = getattr(TINY, field.name)
    step = -1 if field.name == 'digit_size' else 1   # 28 is its largest value
    changed = dataclasses.replace(TINY, **{field.name: value / 2 if isinstance(value, float)
                                           else value + step})
    names.add(changed.name)
    assert md.dataset_dir('d', changed) != md.dataset_dir('d', TINY)
  assert len(names) == 1 + len(dataclasses.fields(md.MovingDigitsConfig))
  # ...and only the values count, not how they were typed (e.g. from a config file).
  assert md.MovingDigitsConfig(min_speed=2, max_speed=np.float32(4)).name == \
      md.MovingDigitsConfig(min_speed=2.0, max_speed=4.0).name


@pytest.mark.parametrize('kwargs', [
    dict(image_size=28), dict(num_frames=0), dict(max_digits=0), dict(train_size=0),
    dict(min_speed=0.0), dict(min_speed=3.0, max_speed=2.0), dict(image_size=32, max_speed=5.0),
    dict(test_fraction=1.0), dict(seed=-1)])
def test_bad_config_raises(kwargs):
  with pytest.raises(ValueError):
    md.MovingDigitsConfig(**kwargs)


def test_bad_split_or_index_raises():
  with pytest.raises(ValueError, match='split'):
    md.generate_example(0, TINY, 'validation')
  with pytest.raises(ValueError, match='out of range'):
    md.generate_example(TINY.test_size, TINY, 'test')


def test_built_dataset_holds_generated_examples(built):
  data_dir, path = built
  assert path == md.dataset_dir(data_dir, TINY) and os.path.isdir(path)
  for split in md.SPLITS:
    source = md.load_moving_digits(data_dir, TINY, split)
    assert len(source) == TINY.split_size(split)
    for i in range(len(source)):
      record, expected = source[i], md.generate_example(i, TINY, split)
      assert record['caption'] == expected['caption'].encode()
      for k in ('video', 'digits', 'directions', 'source_index'):
        assert record[k].dtype == expected[k].dtype
        np.testing.assert_array_equal(record[k], expected[k])


def test_build_is_idempotent_and_reproducible(built, tmp_path):
  data_dir, path = built
  mtimes = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
  assert md.build_moving_digits(data_dir, TINY) == path
  assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == mtimes
  # An independent build with the same config writes byte-identical records.
  other = md.build_moving_digits(str(tmp_path), TINY)
  records = sorted(f for f in os.listdir(path) if '.array_record' in f)
  assert len(records) == 2 and records == sorted(f for f in os.listdir(other)
                                                 if '.array_record' in f)
  for f in records:
    with open(os.path.join(path, f), 'rb') as a, open(os.path.join(other, f), 'rb') as b:
      assert a.read() == b.read()


def test_loading_an_unbuilt_config_names_the_path(built):
  data_dir, _ = built
  other = dataclasses.replace(TINY, seed=7)
  with pytest.raises(FileNotFoundError, match=md.dataset_dir(data_dir, other)):
    md.load_moving_digits(data_dir, other, 'train')


def test_command_line_builds_the_dataset(tmp_path):
  cfg = md.MovingDigitsConfig(image_size=32, num_frames=2, train_size=4, test_size=2)
  out = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.data.moving_digits', f'--data_dir={tmp_path}',
       '--image_size=32', '--num_frames=2', '--train_size=4', '--test_size=2',
       f'--preview={tmp_path}/preview.png'],
      capture_output=True, text=True, check=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert f'dataset: {md.dataset_dir(str(tmp_path), cfg)}' in out.stdout
  assert len(md.load_moving_digits(str(tmp_path), cfg, 'train')) == 4
  assert os.path.getsize(tmp_path / 'preview.png') > 0


def test_resized_digits_are_the_real_digits_smaller():
  cfg = md.MovingDigitsConfig(image_size=32, digit_size=16, num_frames=3, max_digits=1,
                              train_size=4, test_size=1)
  small = md.digit_images(16)
  images, _ = md.mnist_digits()
  assert small.shape == (5000, 16, 16)
  # Antialiased downscaling keeps the ink: the total intensity scales with the area.
  ratio = small[:200].astype(float).sum(axis=(1, 2)) / images[:200].astype(float).sum(axis=(1, 2))
  np.testing.assert_allclose(np.median(ratio), (16 / 28) ** 2, rtol=0.15)
  for i in range(cfg.train_size):
    ex = md.generate_example(i, cfg, 'train')
    frame, digit = ex['video'][0, ..., 0], small[ex['source_index'][0]]
    rows, cols = np.nonzero(frame)
    drows, dcols = np.nonzero(digit)
    y, x = rows.min() - drows.min(), cols.min() - dcols.min()
    canvas = np.zeros_like(frame)
    canvas[y:y + 16, x:x + 16] = digit
    np.testing.assert_array_equal(frame, canvas)
  with pytest.raises(ValueError, match='digit_size'):
    md.MovingDigitsConfig(digit_size=40)
