"""Space-to-depth latent codec: layout, exact inverse, normalisation on moving digits, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflow_jax import config as config_lib
from pflow_jax.data import datasets, moving_digits as md, pipeline
from pflow_jax.models import latent_codec


@pytest.mark.parametrize('factor, channels', [(4, 1), (2, 3)])
def test_encode_layout_matches_pixel_blocks(factor, channels):
  codec = latent_codec.SpaceToDepthCodec(factor=factor, channels=channels, shift=0.25,
                                         scale=2.0)
  video = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 12, channels)).astype(np.float32)
  latents = np.asarray(codec.encode(jnp.asarray(video)))
  assert latents.shape == (2, 3, 8 // factor, 12 // factor, channels * factor ** 2)
  for i in range(8 // factor):
    for j in range(12 // factor):
      for dy in range(factor):
        for dx in range(factor):
          for c in range(channels):
            np.testing.assert_allclose(
                latents[:, :, i, j, (dy * factor + dx) * channels + c],
                (video[:, :, factor * i + dy, factor * j + dx, c] - 0.25) * 2.0, rtol=1e-6)


def test_decode_inverts_encode_under_jit():
  codec = latent_codec.SpaceToDepthCodec()
  video = jax.random.uniform(jax.random.key(0), (2, 3, 16, 8, 1), minval=-1, maxval=1)
  latents = jax.jit(codec.encode)(video)
  np.testing.assert_allclose(jax.jit(codec.decode)(latents), video, rtol=0, atol=1e-6)
  codec3 = latent_codec.SpaceToDepthCodec(factor=2, channels=3, shift=0.0, scale=1.0)
  video3 = jax.random.uniform(jax.random.key(1), (1, 2, 6, 4, 3))
  np.testing.assert_array_equal(codec3.decode(codec3.encode(video3)), video3)


def test_interface():
  codec = latent_codec.SpaceToDepthCodec(factor=4, channels=3)
  assert isinstance(codec, latent_codec.LatentCodec)
  assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (48, 4, 1)


def test_the_configs_normalisation_whitens_its_default_data():
  """latent.shift / latent.scale give ~zero-mean, unit-variance latents on data's default."""
  config = config_lib.base_config()
  cfg = datasets.moving_digits_config(config.data)
  video = np.stack([md.generate_example(i, cfg, 'train')['video'] for i in range(256)])
  latents = np.asarray(latent_codec.make_codec(config.latent).encode(
      pipeline.video_to_float(jnp.asarray(video))))
  assert abs(latents.mean()) < 0.05 and abs(latents.std() - 1) < 0.05, (latents.mean(),
                                                                         latents.std())


def test_make_codec_from_config():
  cfg = config_lib.base_config().latent
  codec = latent_codec.make_codec(cfg)
  assert codec == latent_codec.SpaceToDepthCodec(cfg.factor, cfg.pixel_channels, cfg.shift,
                                                 cfg.scale)
  with pytest.raises(ValueError, match='kind'):
    latent_codec.make_codec({**cfg.to_dict(), 'kind': 'vq'})


@pytest.mark.parametrize('shape, match', [
    ((1, 2, 10, 8, 1), 'divisible'), ((1, 2, 8, 6, 1), 'divisible'),
    ((1, 2, 8, 8, 3), r'\[B, T, H, W, 1\]'), ((2, 8, 8, 1), r'\[B, T, H, W, 1\]')])
def test_bad_video_shapes_raise(shape, match):
  with pytest.raises(ValueError, match=match):
    latent_codec.SpaceToDepthCodec().encode(jnp.zeros(shape))


def test_bad_latent_shapes_and_params_raise():
  with pytest.raises(ValueError, match='16'):
    latent_codec.SpaceToDepthCodec().decode(jnp.zeros((1, 2, 2, 2, 4)))
  with pytest.raises(ValueError, match='scale'):
    latent_codec.SpaceToDepthCodec(scale=0.0)
  with pytest.raises(ValueError, match='factor'):
    latent_codec.SpaceToDepthCodec(factor=0)
