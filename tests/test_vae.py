"""Causal video VAE: causality, first-frame rule, exact chunking, tiling, shapes, size."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pflow_jax import config as config_lib
from pflow_jax.models import latent_codec
from pflow_jax.models import vae as vae_lib
from pflow_jax.models import vae_blocks
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.parallel import rules

# Parameters of the released VAE, counted by instantiating the official
# video_vae.CausalVideoVAE (jy0205/Pyramid-Flow) on torch's meta device with
# its causal_video_vae/config.json deltas (encoder_out_channels=16,
# decoder_in_channels=16; torch 2.13.0, diffusers 0.42.1):
# encoder + quant_conv 109,633,088, decoder + post_quant_conv 225,768,979;
# 260 state-dict keys.
OFFICIAL_PARAMS = 335_402_067
OFFICIAL_KEYS = 260
# A few official state-dict shapes (torch layout) from the same instantiation.
OFFICIAL_SHAPES = {
    'encoder.conv_in.conv.weight': (128, 3, 3, 3, 3),
    'encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight': (256, 128, 1, 1, 1),
    'encoder.down_blocks.0.temporal_downsamplers.0.conv.conv.weight': (128, 128, 3, 3, 3),
    'encoder.mid_block.attentions.0.to_out.0.weight': (512, 512),
    'quant_conv.conv.weight': (32, 32, 1, 1, 1),
    'decoder.up_blocks.0.upsamplers.0.conv.conv.weight': (2048, 512, 3, 3, 3),
    'decoder.up_blocks.2.temporal_upsamplers.0.conv.conv.weight': (512, 256, 3, 3, 3),
    'decoder.up_blocks.3.resnets.0.conv_shortcut.conv.weight': (128, 256, 1, 1, 1),
    'decoder.conv_out.conv.weight': (3, 128, 3, 3, 3),
    'decoder.conv_norm_out.weight': (128,),
}

CFG = vae_lib.VAEConfig.tiny()
F, S = CFG.temporal_factor, CFG.spatial_factor  # 4, 4


def _tiny_vae(config=CFG):
  """Tiny VAE with numpy-drawn weights (kernels at 1/sqrt(fan_in), norms and biases
  perturbed so every parameter matters). Random init through XLA would cost ~9 s of
  CPU compile, and the official std-0.02 init shrinks the signal to ~1e-3."""
  abstract = nnx.eval_shape(lambda: vae_lib.CausalVAE(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(0)
  flat = []
  for path, var in nnx.to_flat_state(state):
    shape = var.shape
    if path[-1] == 'kernel':
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = (path[-1] == 'scale') + 0.1 * rng.standard_normal(shape)
    flat.append((path, var.replace(jnp.asarray(value, jnp.float32))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.fixture(scope='module')
def vae():
  return _tiny_vae()


def _video(t, h=8, w=8, seed=0, b=1):
  return jax.random.uniform(jax.random.key(seed), (b, t, h, w, 3), minval=-1.0, maxval=1.0)


def _close(a, b, tol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  scale = max(float(np.abs(b).max()), 1e-6)
  np.testing.assert_allclose(a, b, atol=tol * scale, rtol=0)


@pytest.fixture(scope='module')
def encode(vae):
  return jax.jit(lambda v: vae.encode(v))


@pytest.fixture(scope='module')
def decode(vae):
  return jax.jit(lambda z: vae.decode(z))


def test_official_size_matches_the_official_state_dict():
  abstract = nnx.eval_shape(lambda: vae_lib.CausalVAE(vae_lib.VAEConfig.official(),
                                                      rngs=nnx.Rngs(0)))
  n = vae_lib.count_params(abstract)
  assert abs(n - OFFICIAL_PARAMS) <= 0.01 * OFFICIAL_PARAMS
  assert n == OFFICIAL_PARAMS  # the architecture is the official one, so exactly
  names = vae_lib.official_names(abstract)
  keys = [k for k, _ in names.values()]
  assert len(keys) == len(set(keys)) == OFFICIAL_KEYS
  flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  assert set(flat) == set(names)  # every parameter has an official name
  by_key = {k: (path, axes) for path, (k, axes) in names.items()}
  for key, torch_shape in OFFICIAL_SHAPES.items():
    path, axes = by_key[key]
    assert flat[path].shape == tuple(torch_shape[a] for a in axes), key


def test_official_config_latent_shapes_without_allocation():
  abstract = nnx.eval_shape(lambda: vae_lib.CausalVAE(vae_lib.VAEConfig.official(),
                                                      rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  video = jax.ShapeDtypeStruct((2, 17, 64, 48, 3), jnp.float32)
  mean, logvar = jax.eval_shape(lambda st, v: tuple(nnx.merge(graphdef, st).encode(v)),
                                state, video)
  assert mean.shape == logvar.shape == (2, 3, 8, 6, 16)
  out = jax.eval_shape(lambda st, z: nnx.merge(graphdef, st).decode(z), state, mean)
  assert out.shape == (2, 17, 64, 48, 3)


@pytest.mark.parametrize('t', [1, 1 + F, 1 + 3 * F])
def test_shapes(vae, encode, decode, t):
  video = _video(t, h=8, w=12)
  mean, logvar = encode(video)
  want = (1, 1 + (t - 1) // F, 8 // S, 12 // S, CFG.latent_channels)
  assert mean.shape == logvar.shape == want == vae.latent_shape(video.shape)
  assert decode(mean).shape == video.shape


def test_image_is_a_one_frame_video_encoded_on_its_own(encode):
  video = _video(1 + 2 * F, seed=1)
  image_mean, _ = encode(video[:, :1])
  assert image_mean.shape[1] == 1
  video_mean, _ = encode(video)
  # The first frame is encoded alone, so it does not depend on the rest.
  _close(video_mean[:, :1], image_mean)


def test_encoder_is_causal(encode):
  video = _video(1 + 3 * F, seed=2)
  base, _ = encode(video)
  for j in range(3):
    # Change every frame after latent block j (pixel frames > j * F).
    changed = video.at[:, 1 + j * F:].set(_video(video.shape[1] - 1 - j * F, seed=10 + j))
    out, _ = encode(changed)
    _close(out[:, :j + 1], base[:, :j + 1])
    assert float(jnp.abs(out[:, j + 1] - base[:, j + 1]).max()) > 1e-3


def test_decoder_is_causal(decode):
  z = jax.random.normal(jax.random.key(3), (1, 4, 2, 2, CFG.latent_channels))
  base = decode(z)
  changed = decode(z.at[:, 2:].add(1.0))
  # Latent frames 0, 1 alone decide pixel frames 0 .. F.
  _close(changed[:, :1 + F], base[:, :1 + F])
  assert float(jnp.abs(changed[:, 1 + F:] - base[:, 1 + F:]).max()) > 1e-3


def test_chunked_encode_equals_whole(vae, encode):
  video = _video(1 + 3 * F, h=8, w=12, seed=4)
  whole = encode(video)
  # First frame, then 3 loop steps carrying the caches.
  chunked = jax.jit(lambda v: vae_lib.encode_chunked(vae, v, F))(video)
  _close(chunked.mean, whole.mean)
  _close(chunked.logvar, whole.logvar)


def test_chunked_decode_equals_whole(vae, decode):
  z = jax.random.normal(jax.random.key(5), (1, 4, 2, 3, CFG.latent_channels))
  # First latent frame, one loop step of 2, then a 1-frame tail.
  chunked = jax.jit(lambda x: vae_lib.decode_chunked(vae, x, 2))(z)
  _close(chunked, decode(z))


def test_cache_carry_matches_conv_count(vae):
  """The carry holds one entry per causal conv with a temporal kernel."""
  temporal = [m for _, m in nnx.iter_modules(vae.encoder)
              if isinstance(m, vae_blocks.CausalConv3d) and m.kernel_size[0] > 1]
  caches = {}

  def run(video):  # traced only: shapes, no compute
    caches['first'] = vae_blocks.TemporalCache()
    vae.encode(video, caches['first'])
    carry = caches['first'].carry
    caches['stale'] = vae_blocks.TemporalCache(carry + carry[:1])  # one entry too many
    vae.encode(video[:, :F], caches['stale'])

  jax.eval_shape(run, jax.ShapeDtypeStruct((1, 1 + F, 8, 8, 3), jnp.float32))
  assert len(caches['first'].carry) == len(temporal)
  with pytest.raises(ValueError, match='entries'):
    caches['stale'].check_consumed()


@pytest.mark.slow
def test_tiled_with_one_tile_is_exact(vae, encode, decode):
  video = _video(1 + F, h=8, w=8, seed=6)
  whole = encode(video)
  tiled = jax.jit(lambda v: vae_lib.encode_tiled(vae, v, tile=8, overlap=4))(video)
  _close(tiled.mean, whole.mean, 1e-6)
  out = jax.jit(lambda z: vae_lib.decode_tiled(vae, z, tile=2, overlap=1))(whole.mean)
  _close(out, decode(whole.mean), 1e-6)


def test_tile_blending_reassembles_a_local_map():
  """With a pointwise map per tile, the blended result is the map of the whole."""
  x = jax.random.normal(jax.random.key(7), (1, 2, 11, 9, 3))
  same = vae_lib._run_tiled(x, 4, 2, (1, 1), lambda v: 2 * v)
  _close(same, 2 * x, 1e-6)
  up = vae_lib._run_tiled(x, 4, 1, (2, 1), lambda v: jnp.repeat(jnp.repeat(v, 2, 2), 2, 3))
  _close(up, jnp.repeat(jnp.repeat(x, 2, 2), 2, 3), 1e-6)


@pytest.mark.slow
def test_tiled_chunked_equals_tiled(vae):
  """Chunking inside each tile is exact, so it leaves the tiled result unchanged."""
  video = _video(1 + 2 * F, h=16, w=12, seed=8)
  tiled = jax.jit(lambda v: vae_lib.encode_tiled(vae, v, tile=8, overlap=4))(video)
  both = jax.jit(lambda v: vae_lib.encode_tiled(vae, v, tile=8, overlap=4,
                                                chunk_frames=F))(video)
  assert tiled.mean.shape == (1, 3, 4, 3, CFG.latent_channels)
  _close(both.mean, tiled.mean)
  z = tiled.mean
  dec = jax.jit(lambda x: vae_lib.decode_tiled(vae, x, tile=2, overlap=1))(z)
  dec_chunked = jax.jit(lambda x: vae_lib.decode_tiled(vae, x, tile=2, overlap=1,
                                                       chunk_latents=2))(z)
  assert dec.shape == video.shape
  _close(dec_chunked, dec)


def test_bad_shapes_raise(vae):
  with pytest.raises(ValueError, match='1 \\+ k'):
    vae.encode(_video(F))
  with pytest.raises(ValueError, match='spatial factor'):
    vae.encode(_video(1, h=10))
  with pytest.raises(ValueError, match='channels'):
    vae.encode(jnp.zeros((1, 1, 8, 8, 1)))
  with pytest.raises(ValueError, match='multiple'):
    vae_lib.encode_chunked(vae, _video(1 + 2 * F), chunk_frames=F + 1)
  with pytest.raises(ValueError, match='latents'):
    vae.decode(jnp.zeros((1, 1, 2, 2, CFG.latent_channels + 1)))
  with pytest.raises(ValueError, match='block_out_channels'):
    vae_lib.VAEConfig(block_out_channels=(64, 64), norm_num_groups=32)
  with pytest.raises(ValueError, match='decoder upsamples'):
    vae_lib.VAEConfig(spatial_up=(True, True, False, False))


def test_posterior_clamps_logvar_and_samples(vae, encode):
  model = nnx.clone(vae)
  run = nnx.jit(lambda m, v: m.encode(v))
  lat = CFG.latent_channels
  bias = jnp.concatenate([jnp.zeros(lat), jnp.full((lat,), 1e4)])
  model.quant_conv.bias.set_value(bias)
  post = run(model, _video(1))
  np.testing.assert_array_equal(np.asarray(post.logvar), CFG.logvar_max)
  model.quant_conv.bias.set_value(-bias)
  post = run(model, _video(1))
  np.testing.assert_array_equal(np.asarray(post.logvar), CFG.logvar_min)
  noise = jax.random.normal(jax.random.key(0), post.mean.shape)
  _close(post.sample(jax.random.key(0)), post.mean + np.exp(-15.0) * noise, 1e-6)
  zero = vae_lib.DiagonalGaussian(jnp.zeros((1, 2)), jnp.zeros((1, 2)))
  assert float(zero.kl()[0]) == 0.0


def test_latent_normalisation_uses_official_constants():
  cfg = vae_lib.VAEConfig.official()
  z = jnp.stack([jnp.full((2, 2, 16), 0.1490), jnp.full((2, 2, 16), 2.0)])[None]
  n = vae_lib.normalize_latents(z, cfg)
  _close(n[:, 0], jnp.zeros_like(n[:, 0]), 1e-6)
  _close(n[:, 1], jnp.full_like(n[:, 1], (2.0 + 0.2343) / 3.0986), 1e-6)
  flux = vae_lib.VAEConfig.official('miniflux')
  assert (flux.first_frame_shift, flux.first_frame_scale) == (-0.04, 1 / 1.8726)
  _close(vae_lib.denormalize_latents(n, cfg), z, 1e-6)


def test_codec(vae, encode, decode):
  cfg = dataclasses.replace(CFG, first_frame_shift=0.5, first_frame_scale=2.0,
                            video_shift=-1.0, video_scale=0.5)
  model = _tiny_vae(cfg)  # same weights as `vae`
  codec = vae_lib.VAECodec.from_vae(model)
  assert isinstance(codec, latent_codec.LatentCodec)
  assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (
      CFG.latent_channels, S, F)
  video = _video(1 + 2 * F, seed=9)
  latents = jax.jit(lambda c, v: c.encode(v))(codec, video)
  mean = encode(video).mean
  _close(latents[:, :1], (mean[:, :1] - 0.5) * 2.0)
  _close(latents[:, 1:], (mean[:, 1:] + 1.0) * 0.5)
  _close(jax.jit(lambda c, z: c.decode(z))(codec, latents), decode(mean))


def test_sharded_encode_equals_single_device(vae, encode):
  mesh = mesh_lib.make_mesh({'data': 2, 'sequence': 2, 'tensor': 2})
  video = _video(1 + F, h=16, w=16, b=2, seed=11)
  graphdef, state = nnx.split(vae)

  def run(st, v):
    with rules.use_rules(config_lib.VAE_RULES):
      return nnx.merge(graphdef, st).encode(v).mean

  with jax.set_mesh(mesh):
    shardings = rules.state_shardings(state, mesh, config_lib.VAE_RULES)
    sharded = jax.jit(run, in_shardings=(shardings, None))(state, video)
  _close(sharded, encode(video).mean)


@pytest.mark.parametrize('kernel, stride', [((3, 3, 3), (1, 1, 1)), ((3, 3, 3), (1, 2, 2)),
                                            ((3, 3, 3), (2, 1, 1)), ((1, 1, 1), (1, 1, 1))])
def test_conv_as_2d_equals_the_3d_convolution(kernel, stride):
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, 6, 5))
  k = jax.random.normal(jax.random.key(1), kernel + (5, 4))
  want = jax.lax.conv_general_dilated(
      x, k, stride, ((0, 0), (kernel[1] // 2,) * 2, (kernel[2] // 2,) * 2),
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'))
  _close(vae_blocks._conv_as_2d(x, k, stride), want, 1e-4)


def test_logvar_init_is_the_initial_posterior_log_variance():
  """quant_conv's logvar bias starts at logvar_init; its 0.02-std kernel adds a small spread
  (the official init, which the test's numpy-drawn fixture does not use)."""
  logvar_init = -8.0
  config = dataclasses.replace(CFG, logvar_init=logvar_init)
  vae = vae_lib.CausalVAE(config, rngs=nnx.Rngs(0))
  posterior = nnx.jit(lambda m, v: m.encode(v))(vae, _video(5, 16, 16, b=2))
  np.testing.assert_allclose(float(posterior.logvar.mean()), logvar_init, atol=0.05)
  assert float(jnp.abs(posterior.logvar - logvar_init).max()) < 0.5
  assert float(jnp.abs(posterior.mean).max()) < 0.5  # the mean half keeps its zero bias
