"""Our DiTs and VAE against the official PyTorch modules: key maps at paper scale, and
outputs of small random-init official models (tests/fixtures/official, made by
make_fixtures.py there; neither torch nor the official code is needed here)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from configs import pyramid_flow_flux, pyramid_flow_sd3
from pflow_jax.models import dit, layers, official, vae as vae_lib

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'official')
PAPER_PARAMS = {'sd3': 2_028_334_144, 'flux': 1_972_059_200}
# bf16 compute (fp32 parameters, norms, modulation and softmax statistics) against the
# official fp32 output: relative L2 error.
BF16_RELATIVE_ERROR = 0.02


def small_config(family: str) -> dit.DiTConfig:
  """Ours for the fixtures' small official constructor arguments."""
  with open(os.path.join(FIXTURES, f'{family}.json')) as f:
    ctor = json.load(f)['constructor']
  common = dict(num_layers=ctor['num_layers'], num_attention_heads=ctor['num_attention_heads'],
                attention_head_dim=ctor['attention_head_dim'],
                joint_attention_dim=ctor['joint_attention_dim'],
                caption_projection_dim=ctor['num_attention_heads'] * ctor['attention_head_dim'],
                pooled_projection_dim=ctor['pooled_projection_dim'],
                use_temporal_causal=ctor['use_temporal_causal'])
  if family == 'flux':  # 2x2 patches (hard-coded officially) of in_channels / 4 channels
    return dit.DiTConfig(family='flux', num_single_layers=ctor['num_single_layers'],
                         patch_size=2, in_channels=ctor['in_channels'] // 4, sample_size=16,
                         pos_embed_type='none', rope_axes_dim=tuple(ctor['axes_dims_rope']),
                         **common)
  return dit.DiTConfig(sample_size=ctor['sample_size'], patch_size=ctor['patch_size'],
                       in_channels=ctor['in_channels'],
                       pos_embed_max_size=ctor['pos_embed_max_size'], **common)


def converted(family: str) -> tuple[dit.DiTConfig, nnx.State]:
  cfg = small_config(family)
  with safe_open(os.path.join(FIXTURES, f'{family}.safetensors'), framework='numpy') as f:
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    params = official.load_dit_params(cfg, {k: (lambda k=k: f.get_tensor(k)) for k in shapes},
                                      shapes)
    abstract = nnx.eval_shape(lambda: dit.PyramidDiT(cfg, rngs=nnx.Rngs(0)))
    return cfg, official.filled(nnx.state(abstract, nnx.Param), params)  # reads f


def our_output(cfg, state, clips, timesteps, text, dtype=jnp.float32):
  """The official multi-clip forward (history clips, then the target), in our terms."""
  graph = nnx.graphdef(nnx.eval_shape(lambda: dit.PyramidDiT(cfg, dtype=dtype,
                                                            rngs=nnx.Rngs(0))))
  model = nnx.merge(graph, state)
  target = clips[-1]
  tokens, positions, offset = [], [], 0
  for clip in clips:
    tok, pos = model.embed_clip(clip, full_size=target.shape[2:4], frame_offset=offset)
    tokens.append(tok)
    positions.append(pos)
    offset += clip.shape[1]
  tokens, positions = jnp.concatenate(tokens, 1), jnp.concatenate(positions, 1)
  mask = dit.joint_attention_mask(text['mask'], tokens.shape[1],
                                  frames=positions[..., 0] if cfg.use_temporal_causal else None)
  history = tokens.shape[1] - math.prod(target.shape[1:4]) // cfg.patch_size ** 2
  out = model.forward_tokens(tokens, model.embed_conditions(timesteps, text), positions, mask,
                             history=history)
  p = cfg.patch_size
  return model.unpatchify(out, (target.shape[1], target.shape[2] // p, target.shape[3] // p))


def test_vae_key_map_covers_the_released_vae_exactly():
  with open(os.path.join(FIXTURES, 'paper_scale_shapes.json')) as f:
    shapes = {k: tuple(v) for k, v in json.load(f)['vae'].items()}
  mapping = official.check_vae_keys(vae_lib.VAEConfig.official(), shapes)
  assert set(mapping) == set(shapes)
  assert sum(math.prod(shape) for _, shape, _ in mapping.values()) == 335_402_067


@pytest.mark.parametrize('family', ['sd3', 'flux'])
def test_key_map_covers_the_released_models_exactly(family):
  """Every key and shape of the released DiT state dicts maps onto the paper configs."""
  with open(os.path.join(FIXTURES, 'paper_scale_shapes.json')) as f:
    shapes = {k: tuple(v) for k, v in json.load(f)[family].items()}
  module = pyramid_flow_flux if family == 'flux' else pyramid_flow_sd3
  cfg = dit.DiTConfig(**module.get_config('768p').model)
  mapping = official.check_dit_keys(cfg, shapes)
  assert sum(math.prod(shape) for _, shape in mapping.values()) == PAPER_PARAMS[family]
  assert set(shapes) - set(mapping) <= set(official.SKIPPED_KEYS)


def _case(family, case):
  io = np.load(os.path.join(FIXTURES, f'{family}_io.npz'))
  to_ours = lambda x: jnp.asarray(np.moveaxis(x, 1, -1))  # noqa: E731  [B, C, T, H, W] -> ours
  clips = [to_ours(io[k]) for k in sorted(k for k in io.files if k.startswith(f'{case}_clip'))]
  text = {'seq': jnp.asarray(io['text']), 'mask': jnp.asarray(io['text_mask']),
          'pooled': jnp.asarray(io['pooled'])}
  return io, clips, text, np.moveaxis(io[f'{case}_out'], 1, -1)


def _run(cfg, state, clips, timesteps, text, dtype=jnp.float32):
  def fn(state, clips, timesteps, text):  # a new function per call: traced afresh
    return our_output(cfg, state, clips, timesteps, text, dtype)

  return np.asarray(jax.jit(fn)(state, clips, timesteps, text))


@pytest.mark.parametrize('family', ['sd3', 'flux'])
@pytest.mark.parametrize('case', ['clip', 'history'])
def test_forward_matches_the_official_module(family, case, monkeypatch):
  """Given the official sinusoidal timestep features, every output is within 2e-5: fp32
  rounding, as outputs reach 8.5 in size, where one step of fp32 is 1e-6 (measured up to
  1.0e-5, with the tests' quick compiles and with XLA's default ones).

  The features themselves differ in their last bits (next test); unpatched, that moves
  the outputs by up to ~4e-5, within the 1e-4 also asserted.
  """
  cfg, state = converted(family)
  io, clips, text, want = _case(family, case)
  assert float(np.abs(want).mean()) > 0.05  # a real output, not the zero of a fresh model
  timesteps = jnp.asarray(io[f'{case}_timesteps'])
  unpatched = _run(cfg, state, clips, timesteps, text)
  np.testing.assert_allclose(unpatched, want, atol=1e-4, rtol=0)
  features = jnp.asarray(io[f'{case}_time_features'])
  monkeypatch.setattr(layers, 'timestep_embedding', lambda t, dim: features)
  np.testing.assert_allclose(_run(cfg, state, clips, timesteps, text), want, atol=2e-5, rtol=0)
  bf16 = _run(cfg, state, clips, timesteps, text, jnp.bfloat16)
  assert np.linalg.norm(bf16 - want) / np.linalg.norm(want) < BF16_RELATIVE_ERROR


@pytest.mark.parametrize('family', ['sd3', 'flux'])
def test_timestep_features_differ_from_the_official_by_frequency_rounding_only(family):
  """Ours and the official sinusoid agree up to one ulp of each frequency times the
  timestep (the official fp32 exp is not always correctly rounded)."""
  io = np.load(os.path.join(FIXTURES, f'{family}_io.npz'))
  for case in ('clip', 'history'):
    t = io[f'{case}_timesteps']
    theirs = io[f'{case}_time_features']
    ours = np.asarray(layers.timestep_embedding(jnp.asarray(t), theirs.shape[1]))
    half = theirs.shape[1] // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    bound = np.tile(t[:, None] * freqs[None] * 2.0 ** -23, 2) + 2e-7
    assert np.all(np.abs(ours - theirs) <= bound), case
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize('family', ['sd3', 'flux'])
def test_conversion_refuses_a_state_dict_that_does_not_fit(family):
  cfg = small_config(family)
  with safe_open(os.path.join(FIXTURES, f'{family}.safetensors'), framework='numpy') as f:
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  bad = dict(shapes)
  bad['proj_out.weight'] = (3, 3)
  bad['extra.weight'] = (1,)
  del bad['norm_out.linear.bias']
  with pytest.raises(official.ConversionError) as error:
    official.check_dit_keys(cfg, bad)
  message = str(error.value)
  assert "['extra.weight']" in message and "['norm_out.linear.bias']" in message
  assert 'proj_out.weight (3, 3)' in message


def test_vae_encode_and_decode_match_the_official_module_whole_and_chunked():
  cfg = vae_lib.VAEConfig.tiny(latent_channels=4)
  with safe_open(os.path.join(FIXTURES, 'vae.safetensors'), framework='numpy') as f:
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    params = official.load_vae_params(cfg, {k: (lambda k=k: f.get_tensor(k)) for k in shapes},
                                      shapes)
    state = official.filled(nnx.state(nnx.eval_shape(  # reads f
        lambda: vae_lib.CausalVAE(cfg, rngs=nnx.Rngs(0))), nnx.Param), params)
  with open(os.path.join(FIXTURES, 'vae.json')) as f:
    windows = json.load(f)
  graph = nnx.graphdef(nnx.eval_shape(lambda: vae_lib.CausalVAE(cfg, rngs=nnx.Rngs(0))))
  io = np.load(os.path.join(FIXTURES, 'vae_io.npz'))
  ours = lambda x: jnp.asarray(np.moveaxis(x, 1, -1))  # noqa: E731
  theirs = lambda x: np.moveaxis(x, 1, -1)  # noqa: E731
  video, latents = ours(io['video']), ours(io['latents'])

  @jax.jit
  def run(state, video, latents):
    vae = nnx.merge(graph, state)
    return (tuple(vae.encode(video)),
            tuple(vae_lib.encode_chunked(vae, video, windows['encode_window'])),
            vae.decode(latents), vae_lib.decode_chunked(vae, latents, windows['decode_window']))

  (mean, logvar), (c_mean, c_logvar), decoded, c_decoded = run(state, video, latents)
  assert float(np.abs(io['decoded']).mean()) > 0.05 and float(np.abs(io['mean']).mean()) > 0.05
  for got, key in ((mean, 'mean'), (logvar, 'logvar'), (c_mean, 'chunked_mean'),
                   (c_logvar, 'chunked_logvar'), (decoded, 'decoded'),
                   (c_decoded, 'decoded_chunked')):
    want = theirs(io[key])
    assert got.shape == want.shape, key
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0, err_msg=key)


def test_vae_conversion_refuses_a_state_dict_that_does_not_fit():
  with safe_open(os.path.join(FIXTURES, 'vae.safetensors'), framework='numpy') as f:
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  with pytest.raises(official.ConversionError, match='shapes differ'):
    official.check_vae_keys(vae_lib.VAEConfig.tiny(latent_channels=8), shapes)
