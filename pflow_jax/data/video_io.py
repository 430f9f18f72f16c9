"""Video files: mp4 (PyAV, H.264) and gif (Pillow) writers, a PNG frame grid, an mp4/gif reader.

Frames are uint8 [T, H, W, C] with C = 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

from fractions import Fraction
import os

import av
import numpy as np
from PIL import Image


def _check_frames(frames: np.ndarray, what: str, ndim: int) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise ValueError(f'{what} must be uint8, got {frames.dtype}')
  if frames.ndim != ndim or frames.shape[-1] not in (1, 3) or 0 in frames.shape:
    dims = '[N, T, H, W, C]' if ndim == 5 else '[T, H, W, C]'
    raise ValueError(f'{what} must be non-empty {dims} with C in (1, 3), got shape '
                     f'{frames.shape}')
  return frames


def _to_rgb(frames: np.ndarray) -> np.ndarray:
  return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def write_video(path: str, frames: np.ndarray, fps: float) -> None:
  """Writes uint8 [T, H, W, C] frames as .mp4 (H.264) or .gif (looping), by extension.

  mp4: grey frames become RGB, and odd heights/widths are padded by one
  replicated edge row/column (yuv420p needs even sizes), so a reader sees
  the padded size. gif: lossless for grey frames (256-level palette), RGB frames
  are palette-quantised; identical consecutive frames are merged into one
  longer frame by Pillow, so a reader may see fewer frames.
  """
  frames = _check_frames(frames, 'frames', 4)
  if fps <= 0:
    raise ValueError(f'fps must be positive, got {fps}')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.mp4':
    _write_mp4(path, frames, fps)
  elif ext == '.gif':
    _write_gif(path, frames, fps)
  else:
    raise ValueError(f'unsupported video extension {ext!r} in {path}; use .mp4 or .gif')


def _write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
  _, h, w, _ = frames.shape
  frames = np.pad(_to_rgb(frames), ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  with av.open(path, mode='w') as container:
    stream = container.add_stream('libx264', rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuv420p'
    stream.options = {'crf': '12'}  # near-lossless: these clips are tiny
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())  # flush the encoder


def _write_gif(path: str, frames: np.ndarray, fps: float) -> None:
  grey = frames.shape[-1] == 1
  images = [Image.fromarray(f[..., 0] if grey else f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:],
                 duration=max(10, round(1000 / fps)), loop=0)


def read_video(path: str) -> np.ndarray:
  """Decodes every frame of a video file (mp4, gif, ...) as uint8 [T, H, W, 3]."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'no video file at {path}')
  with av.open(path) as container:
    frames = [f.to_ndarray(format='rgb24') for f in container.decode(video=0)]
  if not frames:
    raise ValueError(f'{path} holds no video frames')
  return np.stack(frames)


def frame_grid(videos: np.ndarray, separator: int = 2, separator_value: int = 128) -> np.ndarray:
  """uint8 [N, T, H, W, C] -> one image: a row per video, a column per frame.

  Frame (n, t) has its top-left corner at (s + n (H + s), s + t (W + s)) with
  s = separator; separators and the outer border are `separator_value`.
  """
  videos = _check_frames(videos, 'videos', 5)
  if separator < 0 or not 0 <= separator_value <= 255:
    raise ValueError(f'need separator >= 0 and separator_value in [0, 255], got '
                     f'{separator}, {separator_value}')
  n, t, h, w, c = videos.shape
  s = separator
  grid = np.full((s + n * (h + s), s + t * (w + s), c), separator_value, np.uint8)
  for i in range(n):
    for j in range(t):
      y, x = s + i * (h + s), s + j * (w + s)
      grid[y:y + h, x:x + w] = videos[i, j]
  return grid


def write_frame_grid(path: str, videos: np.ndarray, separator: int = 2,
                     separator_value: int = 128) -> None:
  """Writes `frame_grid(videos)` as a PNG (grey or RGB like the videos)."""
  grid = frame_grid(videos, separator, separator_value)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format='PNG')
