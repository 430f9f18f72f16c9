"""Random batches in the training layout, for benchmarks and tests (timing and
sharding do not depend on the pixel values)."""

from __future__ import annotations

import ml_collections
import numpy as np

from pflow_jax import config as config_lib
from pflow_jax.models import text as text_lib


def synthetic_batch(config: ml_collections.ConfigDict,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
  """One global batch of uint8 videos and their text: tokenized captions, or random
  embeddings (and the empty prompt's) for models on precomputed text."""
  b = config.data.global_batch_size
  h, w = config_lib.image_hw(config.data)
  video = rng.integers(0, 256, (b, config.data.num_frames, h, w, config.latent.pixel_channels),
                       dtype=np.uint8)
  if config.text.encoder == 'toy':
    captions = ['a 3 moving left and a 7 moving down'] * b
    return {'video': video, 'tokens': text_lib.tokenize(captions, config.text.max_length)}
  return {'video': video, **random_text_embeddings(config, b, rng)}


def random_text_embeddings(config: ml_collections.ConfigDict, n: int,
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Text batch arrays of n random prompts (and a random empty prompt) in the layout of
  precomputed embeddings (data/text_embeddings.py)."""
  length = config.text.max_length
  out = {}
  for prefix in ('text_', 'null_text_'):
    valid = rng.integers(1, length + 1, n)
    out[prefix + 'seq'] = rng.standard_normal(
        (n, length, config.model.joint_attention_dim)).astype(np.float32)
    out[prefix + 'mask'] = np.arange(length)[None] < valid[:, None]
    out[prefix + 'pooled'] = rng.standard_normal(
        (n, config.model.pooled_projection_dim)).astype(np.float32)
  return out
