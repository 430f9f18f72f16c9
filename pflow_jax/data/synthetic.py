"""Random batches in the training layout, for benchmarks and tests (timing and
sharding do not depend on the pixel values)."""

from __future__ import annotations

import ml_collections
import numpy as np

from pflow_jax import config as config_lib, inference


def synthetic_batch(config: ml_collections.ConfigDict,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One global batch of uint8 videos and tokenized captions."""
  b = config.data.global_batch_size
  h, w = config_lib.image_hw(config.data)
  video = rng.integers(0, 256, (b, config.data.num_frames, h, w, config.latent.pixel_channels),
                       dtype=np.uint8)
  tokens = inference.tokenize_prompts(config, ['a 3 moving left and a 7 moving down'] * b)
  return {'video': video, 'tokens': tokens}
