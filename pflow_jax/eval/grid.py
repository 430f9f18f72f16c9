"""A PNG of scored samples: a row per clip (its frames, scaled up) with its caption and verdicts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pflow_jax.data import video_io

_LABEL_WIDTH = 260


def write_scored_grid(path: str, videos: np.ndarray, labels: Sequence[str],
                      zoom: int = 2) -> None:
  """uint8 videos [N, T, H, W, C] with one text label per row, written to `path` (PNG)."""
  if len(labels) != len(videos):
    raise ValueError(f'{len(videos)} videos but {len(labels)} labels')
  grid = video_io.frame_grid(videos)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert('RGB')
  image = image.resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)
  canvas = Image.new('RGB', (image.width + _LABEL_WIDTH, image.height), (255, 255, 255))
  canvas.paste(image, (0, 0))
  draw = ImageDraw.Draw(canvas)
  row = (videos.shape[2] + 2) * zoom
  for i, label in enumerate(labels):
    draw.text((image.width + 6, 2 * zoom + i * row + 2), label, fill=(0, 0, 0))
  canvas.save(path, format='PNG')
