"""The caption ablation of eval/conditioning.py on the tiny DiT."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import moving_digits
from pflow_jax.eval import conditioning
from pflow_jax.models import latent_codec, text
from pflow_jax.models.flow_model import FlowModel

CAPTIONS = ['a 3 moving left', 'a 7 moving down', 'a 0 moving right and a 1 moving up',
            'a 5 moving up', 'a 9 moving left', 'a 2 moving right']


def setup(seed=0):
  config = moving_digits.get_config('tiny')
  graphdef, params = nnx.split(FlowModel(config, rngs=nnx.Rngs(seed)), nnx.Param)
  rng = np.random.default_rng(seed)
  videos = rng.integers(0, 256, size=(12, 2, 32, 32, 1), dtype=np.uint8)
  tokens = text.tokenize(CAPTIONS * 2, config.text.max_length)
  return config, graphdef, params, latent_codec.make_codec(config.latent), videos, tokens


def ablate(config, graphdef, params, codec, videos, tokens):
  return conditioning.caption_ablation(config, graphdef, params, codec, videos, tokens,
                                       draws=2, batch_size=6)


def test_a_fresh_model_ignores_the_text():
  # The DiT's output projection starts at zero: the velocity is 0 whatever the caption.
  report = ablate(*setup())
  np.testing.assert_array_equal(report['own'], report['shuffled'])
  np.testing.assert_array_equal(report['own'], report['empty'])
  np.testing.assert_array_equal(report['text_gain'], 0.0)
  assert len(report['own']) == 3 and min(report['own']) > 0


def test_a_text_dependent_model_gives_different_losses_deterministically():
  config, graphdef, params, codec, videos, tokens = setup()
  # Non-zero output modulation and projection let the (pooled) caption reach the velocity.
  for i, layer in enumerate((params['dit']['norm_out']['linear'], params['dit']['proj_out'])):
    layer['kernel'][...] = 0.1 * jax.random.normal(jax.random.key(i), layer['kernel'].shape)
  report = ablate(config, graphdef, params, codec, videos, tokens)
  assert report == ablate(config, graphdef, params, codec, videos, tokens)
  assert not np.allclose(report['own'], report['shuffled'], rtol=1e-4)
  assert not np.allclose(report['own'], report['empty'], rtol=1e-4)
  np.testing.assert_allclose(report['text_gain'],
                             1 - np.array(report['own']) / np.array(report['shuffled']))


def test_bad_inputs():
  config, graphdef, params, codec, videos, tokens = setup()
  with pytest.raises(ValueError, match='not a multiple'):
    conditioning.caption_ablation(config, graphdef, params, codec, videos, tokens, batch_size=5)
  with pytest.raises(ValueError, match='at least 6 clips'):
    conditioning.caption_ablation(config, graphdef, params, codec, videos[:4], tokens[:4],
                                  batch_size=6)
  with pytest.raises(ValueError, match='share one caption'):
    conditioning.caption_ablation(config, graphdef, params, codec, videos,
                                  np.repeat(tokens[:1], 12, 0), batch_size=6)


def test_an_autoregressive_model_is_scored_on_every_target_frame():
  """The default averages the losses of every target frame, frame 0 (no history) included;
  unit_lengths outside the clip are refused."""
  config = moving_digits.get_config('ar,tiny')
  graphdef, params = nnx.split(FlowModel(config, rngs=nnx.Rngs(0)), nnx.Param)
  for i, layer in enumerate((params['dit']['norm_out']['linear'], params['dit']['proj_out'])):
    layer['kernel'][...] = 0.1 * jax.random.normal(jax.random.key(i), layer['kernel'].shape)
  frames = config.data.num_frames
  videos = np.random.default_rng(0).integers(0, 256, size=(12, frames, 32, 32, 1),
                                             dtype=np.uint8)
  tokens = text.tokenize(CAPTIONS * 2, config.text.max_length)
  codec = latent_codec.make_codec(config.latent)
  run = lambda **kw: conditioning.caption_ablation(  # noqa: E731
      config, graphdef, params, codec, videos, tokens, draws=1, batch_size=6, **kw)
  every = run()
  singles = [run(unit_lengths=[n]) for n in range(1, frames + 1)]
  for name in conditioning.CAPTION_SETS:
    np.testing.assert_allclose(every[name], np.mean([r[name] for r in singles], axis=0),
                               rtol=1e-5)
  assert not np.allclose(singles[0]['own'], singles[-1]['own'], rtol=1e-4)
  with pytest.raises(ValueError, match='must lie in'):
    run(unit_lengths=[frames + 1])
