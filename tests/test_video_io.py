"""Video files: mp4/gif round trips through PyAV, exact PNG frame-grid layout, input checks."""

import numpy as np
import pytest
from PIL import Image

from pflow_jax.data import video_io


def moving_square(t=6, h=32, w=48, c=1):
  """A bright square sliding right over a soft gradient: every frame differs."""
  y, x = np.mgrid[:h, :w]
  frames = np.empty((t, h, w, c), np.uint8)
  for i in range(t):
    frame = 40 + 60 * x / w + 30 * y / h
    frame[8:20, 4 + 4 * i:16 + 4 * i] = 230
    frames[i] = np.repeat(frame[..., None], c, axis=-1).astype(np.uint8)
  if c == 3:
    frames[..., 1] //= 2  # some colour
  return frames


@pytest.mark.parametrize('channels', [1, 3])
def test_mp4_round_trip(tmp_path, channels):
  frames = moving_square(c=channels)
  path = str(tmp_path / 'v.mp4')
  video_io.write_video(path, frames, fps=8)
  back = video_io.read_video(path)
  assert back.shape == (6, 32, 48, 3) and back.dtype == np.uint8
  error = np.abs(back.astype(int) - np.broadcast_to(frames, back.shape))
  assert error.mean() < 2.0 and np.percentile(error, 99) < 12


def test_mp4_pads_odd_sizes_to_even(tmp_path):
  frames = moving_square(h=31, w=45)
  path = str(tmp_path / 'odd.mp4')
  video_io.write_video(path, frames, fps=7.5)
  back = video_io.read_video(path)
  assert back.shape == (6, 32, 46, 3)
  assert np.abs(back[:, :31, :45].astype(int) - frames).mean() < 2.0


def test_grey_gif_is_lossless(tmp_path):
  frames = moving_square()
  path = str(tmp_path / 'v.gif')
  video_io.write_video(path, frames, fps=4)
  back = video_io.read_video(path)
  np.testing.assert_array_equal(back, np.repeat(frames, 3, axis=-1))
  with Image.open(path) as im:
    assert im.info['loop'] == 0 and im.info['duration'] == 250 and im.n_frames == 6


def test_rgb_gif_round_trip_within_palette_error(tmp_path):
  frames = moving_square(c=3)
  path = str(tmp_path / 'rgb.gif')
  video_io.write_video(path, frames, fps=4)
  back = video_io.read_video(path)
  assert back.shape == frames.shape
  assert np.abs(back.astype(int) - frames).mean() < 4.0


@pytest.mark.parametrize('channels', [1, 3])
def test_frame_grid_layout_is_exact(tmp_path, channels):
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (3, 4, 5, 7, channels), dtype=np.uint8)
  path = str(tmp_path / 'grid.png')
  video_io.write_frame_grid(path, videos, separator=2, separator_value=128)
  with Image.open(path) as im:
    grid = np.asarray(im)
  grid = grid[..., None] if grid.ndim == 2 else grid
  assert grid.shape == (2 + 3 * (5 + 2), 2 + 4 * (7 + 2), channels)
  covered = np.zeros(grid.shape[:2], bool)
  for row in range(3):
    for col in range(4):
      y, x = 2 + row * 7, 2 + col * 9
      np.testing.assert_array_equal(grid[y:y + 5, x:x + 7], videos[row, col])
      covered[y:y + 5, x:x + 7] = True
  assert (grid[~covered] == 128).all()


@pytest.mark.parametrize('frames, path, match', [
    (np.zeros((2, 8, 8, 3), np.float32), 'v.mp4', 'uint8'),
    (np.zeros((2, 8, 8, 2), np.uint8), 'v.mp4', 'C in'),
    (np.zeros((8, 8, 3), np.uint8), 'v.gif', 'shape'),
    (np.zeros((0, 8, 8, 3), np.uint8), 'v.gif', 'non-empty'),
    (np.zeros((2, 8, 8, 3), np.uint8), 'v.avi', 'extension'),
])
def test_bad_video_input_raises(tmp_path, frames, path, match):
  with pytest.raises(ValueError, match=match):
    video_io.write_video(str(tmp_path / path), frames, fps=4)


def test_bad_grid_input_and_missing_file_raise(tmp_path):
  with pytest.raises(ValueError, match='videos'):
    video_io.write_frame_grid(str(tmp_path / 'g.png'), np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(FileNotFoundError, match='nope.mp4'):
    video_io.read_video(str(tmp_path / 'nope.mp4'))
  with pytest.raises(ValueError, match='fps'):
    video_io.write_video(str(tmp_path / 'v.mp4'), np.zeros((2, 8, 8, 3), np.uint8), fps=0)
