"""Causal 3D-conv video VAE (official video_vae/ CausalVideoVAE) in Flax NNX, channels-last.

Videos are [B, T, H, W, C] in [-1, 1]. The encoder is causal in time and its
first frame is encoded on its own, so T = 1 + k * f_t pixel frames give
1 + k latent frames and an image is a 1-frame video; the decoder inverts this.
`VAEConfig.official()` is the released 8x8x8, 16-channel model
(335,402,067 parameters); `VAEConfig.tiny()` runs on CPU.

Long videos: `encode_chunked` / `decode_chunked` run one temporal chunk at a
time with the causal convs' past frames carried between chunks (exact: equal to
the whole-video result), as a `lax.fori_loop` over a fixed-shape step, so
activation memory does not grow with the video. `encode_tiled` /
`decode_tiled` also split frames into overlapping spatial tiles blended
linearly; that is approximate by nature (a tile's convs, norms and attention do
not see the rest of the frame), as in the official tiled encode/decode.

Parameter names follow the official state dict; `official_names` gives the
mapping. Layouts: a conv kernel is [t, h, w, in, out] (torch Conv3d weight
[out, in, t, h, w]: transpose (2, 3, 4, 1, 0)), a linear kernel is [in, out]
(torch [out, in]), GroupNorm weight is our `scale`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pflow_jax.models import vae_blocks as blocks
from pflow_jax.parallel import rules

Array = jax.Array

@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture and latent statistics of the causal VAE (official names in comments).

  Per-level tuples have one entry per level, the encoder's from full
  resolution down, the decoder's from the lowest resolution up.
  """
  in_channels: int = 3                      # encoder_in_channels
  out_channels: int = 3                     # decoder_out_channels
  latent_channels: int = 16                 # encoder_out_channels = decoder_in_channels
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  encoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
  decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3)
  spatial_down: tuple[bool, ...] = (True, True, True, False)   # encoder_spatial_down_sample
  temporal_down: tuple[bool, ...] = (True, True, True, False)  # encoder_temporal_down_sample
  spatial_up: tuple[bool, ...] = (True, True, True, False)     # decoder_spatial_up_sample
  temporal_up: tuple[bool, ...] = (True, True, True, False)    # decoder_temporal_up_sample
  norm_num_groups: int = 32
  norm_eps: float = 1e-6
  mid_attention: bool = True
  logvar_min: float = -30.0                 # DiagonalGaussianDistribution clamp
  logvar_max: float = 20.0
  # Initial posterior log-variance (the logvar half of quant_conv's bias). The
  # official 0 means unit noise on near-zero initial means: the decoder starts
  # from pure noise and a long run slowly pushes logvar down. A negative value
  # starts from an informative latent, which short CPU runs need.
  logvar_init: float = 0.0
  # Pipeline latent normalisation, z_norm = (z - shift) * scale, for the first
  # latent frame and for the later ones (SD3 variant; `official('miniflux')`).
  # From the official PyramidDiTForVideoGeneration: pyramid_mmdit (SD3) uses
  # 0.1490 / 1.8415 and pyramid_flux -0.04 / 1.8726 (the SD3-only releases
  # before miniFLUX had 0.1490 too); the project spec has the two swapped.
  first_frame_shift: float = 0.1490
  first_frame_scale: float = 1 / 1.8415
  video_shift: float = -0.2343
  video_scale: float = 1 / 3.0986

  def __post_init__(self):
    for f in dataclasses.fields(self):  # lists from ml_collections -> tuples
      if isinstance(getattr(self, f.name), list):
        object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
    levels = len(self.block_out_channels)
    for name in ('encoder_layers_per_block', 'decoder_layers_per_block', 'spatial_down',
                 'temporal_down', 'spatial_up', 'temporal_up'):
      if len(getattr(self, name)) != levels:
        raise ValueError(f'VAEConfig.{name} has {len(getattr(self, name))} entries, '
                         f'block_out_channels has {levels} levels')
    if sum(self.spatial_down) != sum(self.spatial_up):
      raise ValueError(f'encoder downsamples space {sum(self.spatial_down)} times but the '
                       f'decoder upsamples {sum(self.spatial_up)} times')
    if sum(self.temporal_down) != sum(self.temporal_up):
      raise ValueError(f'encoder downsamples time {sum(self.temporal_down)} times but the '
                       f'decoder upsamples {sum(self.temporal_up)} times')
    bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if bad:
      raise ValueError(f'block_out_channels {bad} not divisible by norm_num_groups '
                       f'{self.norm_num_groups}')

  @property
  def spatial_factor(self) -> int:
    return 2 ** sum(self.spatial_down)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temporal_down)

  @classmethod
  def official(cls, variant: str = 'sd3') -> VAEConfig:
    """The released VAE (causal_video_vae/config.json); `variant` picks the first-frame stats."""
    first = {'sd3': (0.1490, 1 / 1.8415), 'miniflux': (-0.04, 1 / 1.8726)}
    if variant not in first:
      raise ValueError(f"variant must be one of {sorted(first)}, got {variant!r}")
    shift, scale = first[variant]
    return cls(first_frame_shift=shift, first_frame_scale=scale)

  @classmethod
  def tiny(cls, latent_channels: int = 4) -> VAEConfig:
    """4x spatial, 4x temporal, a few channels: for CPU tests."""
    return cls(latent_channels=latent_channels, block_out_channels=(8, 16, 16),
               encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
               spatial_down=(True, True, False), temporal_down=(True, True, False),
               spatial_up=(True, True, False), temporal_up=(True, True, False),
               norm_num_groups=4, first_frame_shift=0.0, first_frame_scale=1.0,
               video_shift=0.0, video_scale=1.0)


class DiagonalGaussian(NamedTuple):
  """Posterior over latents; unpacks as (mean, logvar). logvar is already clamped."""
  mean: Array
  logvar: Array

  def mode(self) -> Array:
    return self.mean

  def sample(self, rng: Array) -> Array:
    noise = jax.random.normal(rng, self.mean.shape, self.mean.dtype)
    return self.mean + jnp.exp(0.5 * self.logvar) * noise

  def kl(self) -> Array:
    """KL to N(0, I), summed over all but the batch axis."""
    terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
    return 0.5 * terms.sum(axis=tuple(range(1, self.mean.ndim)))


class Encoder(nnx.Module):
  """conv_in, down levels, mid block, norm-SiLU-conv_out to 2 * latent channels."""

  def __init__(self, config: VAEConfig, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    c = config
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = dict(num_groups=c.norm_num_groups, epsilon=c.norm_eps)
    ch = c.block_out_channels
    self.conv_in = blocks.CausalConv3d(c.in_channels, ch[0], 3, **kw)
    self.down_blocks = nnx.List([
        blocks.DownBlock(ch[max(i - 1, 0)], ch[i], num_layers=c.encoder_layers_per_block[i],
                         spatial_down=c.spatial_down[i], temporal_down=c.temporal_down[i],
                         **norm, **kw) for i in range(len(ch))])
    self.mid_block = blocks.MidBlock(ch[-1], attention=c.mid_attention, **norm, **kw)
    self.conv_norm_out = blocks.GroupNorm(ch[-1], c.norm_num_groups, epsilon=c.norm_eps, **kw)
    self.conv_out = blocks.CausalConv3d(ch[-1], 2 * c.latent_channels, 3, **kw)

  def __call__(self, x: Array, cache: blocks.TemporalCache | None = None) -> Array:
    x = rules.constrain(self.conv_in(x, cache), blocks.VIDEO_AXES)
    for block in self.down_blocks:
      x = block(x, cache)
    x = self.mid_block(x, cache)
    return self.conv_out(nnx.silu(self.conv_norm_out(x)), cache)


class Decoder(nnx.Module):
  """conv_in, mid block, up levels, norm-SiLU-conv_out to pixels."""

  def __init__(self, config: VAEConfig, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    c = config
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = dict(num_groups=c.norm_num_groups, epsilon=c.norm_eps)
    rev = tuple(reversed(c.block_out_channels))
    self.conv_in = blocks.CausalConv3d(c.latent_channels, rev[0], 3, **kw)
    self.mid_block = blocks.MidBlock(rev[0], attention=c.mid_attention, **norm, **kw)
    self.up_blocks = nnx.List([
        blocks.UpBlock(rev[max(i - 1, 0)], rev[i], num_layers=c.decoder_layers_per_block[i],
                       spatial_up=c.spatial_up[i], temporal_up=c.temporal_up[i],
                       **norm, **kw) for i in range(len(rev))])
    self.conv_norm_out = blocks.GroupNorm(rev[-1], c.norm_num_groups, epsilon=c.norm_eps, **kw)
    self.conv_out = blocks.CausalConv3d(rev[-1], c.out_channels, 3, **kw)

  def features(self, z: Array, cache: blocks.TemporalCache | None = None) -> Array:
    """Everything before `conv_out` (the GAN's adaptive weight probes that last layer)."""
    x = rules.constrain(self.conv_in(z, cache), blocks.VIDEO_AXES)
    x = self.mid_block(x, cache)
    for block in self.up_blocks:
      x = block(x, cache)
    return nnx.silu(self.conv_norm_out(x))

  def __call__(self, z: Array, cache: blocks.TemporalCache | None = None) -> Array:
    return self.conv_out(self.features(z, cache), cache)


class CausalVAE(nnx.Module):
  """The causal video VAE: `encode(video) -> DiagonalGaussian`, `decode(latents) -> video`.

  Both take an optional `TemporalCache` to process a video chunk by chunk; see
  `encode_chunked` / `decode_chunked` for the drivers.
  """

  def __init__(self, config: VAEConfig, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.config = config
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.encoder = Encoder(config, **kw)
    self.decoder = Decoder(config, **kw)
    lat = config.latent_channels
    self.quant_conv = blocks.CausalConv3d(2 * lat, 2 * lat, 1, **kw)
    self.quant_conv.bias[...] = self.quant_conv.bias[...].at[lat:].set(config.logvar_init)
    self.post_quant_conv = blocks.CausalConv3d(lat, lat, 1, **kw)

  @property
  def spatial_factor(self) -> int:
    return self.config.spatial_factor

  @property
  def temporal_factor(self) -> int:
    return self.config.temporal_factor

  def latent_shape(self, video_shape: Sequence[int]) -> tuple[int, ...]:
    """[B, T, H, W, C] of a whole video -> the shape of its latents."""
    check_video_shape(self.config, video_shape, first=True)
    b, t, h, w, _ = video_shape
    f, s = self.temporal_factor, self.spatial_factor
    return (b, 1 + (t - 1) // f, h // s, w // s, self.config.latent_channels)

  def encode(self, video: Array, cache: blocks.TemporalCache | None = None) -> DiagonalGaussian:
    """video [B, T, H, W, C] in [-1, 1] -> posterior over [B, T', H/s, W/s, latent].

    On a video's first chunk (cache None or fresh) T must be 1 + k * f_t; a
    continuing chunk must hold a multiple of f_t frames.
    """
    check_video_shape(self.config, video.shape, first=blocks.is_first_chunk(cache))
    video = rules.constrain(video, blocks.VIDEO_AXES)
    moments = self.quant_conv(self.encoder(video, cache), cache).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    logvar = jnp.clip(logvar, self.config.logvar_min, self.config.logvar_max)
    return DiagonalGaussian(mean, logvar)

  def decode(self, latents: Array, cache: blocks.TemporalCache | None = None) -> Array:
    """latents [B, T', h, w, latent] -> video [B, 1 + (T'-1) f_t (first chunk) or T' f_t, ...]."""
    if latents.ndim != 5 or latents.shape[-1] != self.config.latent_channels:
      raise ValueError(f'latents must be [B, T, h, w, {self.config.latent_channels}], got '
                       f'shape {latents.shape}')
    if latents.shape[1] < 1:
      raise ValueError('latents have no frames')
    latents = rules.constrain(latents, blocks.VIDEO_AXES)
    video = self.decoder(self.post_quant_conv(latents, cache), cache)
    return rules.constrain(video.astype(jnp.float32), blocks.VIDEO_AXES)


def check_video_shape(config: VAEConfig, shape: Sequence[int], *, first: bool) -> None:
  """Raises ValueError unless `shape` is a video (chunk) the VAE can encode."""
  if len(shape) != 5:
    raise ValueError(f'video must be [B, T, H, W, C], got shape {tuple(shape)}')
  _, t, h, w, c = shape
  f, s = config.temporal_factor, config.spatial_factor
  if c != config.in_channels:
    raise ValueError(f'video has {c} channels, the VAE expects {config.in_channels}')
  if h % s or w % s or h == 0 or w == 0:
    raise ValueError(f'frame size {h}x{w} must be a positive multiple of the spatial '
                     f'factor {s}')
  if first and (t < 1 or (t - 1) % f):
    raise ValueError(f'{t} frames: a video must have 1 + k * {f} frames (the first frame is '
                     'encoded on its own)')
  if not first and (t < 1 or t % f):
    raise ValueError(f'{t} frames: a continuing chunk must have a positive multiple of {f}')


# --- Latent normalisation (pipeline shift / scale) --------------------------------------


def normalize_latents(z: Array, config: VAEConfig) -> Array:
  """(z - shift) * scale, with the first latent frame's own constants."""
  first = (z[:, :1] - config.first_frame_shift) * config.first_frame_scale
  rest = (z[:, 1:] - config.video_shift) * config.video_scale
  return jnp.concatenate([first, rest], axis=1)


def denormalize_latents(z: Array, config: VAEConfig) -> Array:
  first = z[:, :1] / config.first_frame_scale + config.first_frame_shift
  rest = z[:, 1:] / config.video_scale + config.video_shift
  return jnp.concatenate([first, rest], axis=1)


# The two groups normalised apart: VAEConfig's first_frame_* and video_* constants.
LATENT_GROUPS = ('first_frame', 'video')


def moments(x: Array, axis: tuple[int, ...]) -> Array:
  """float32 [3, ...]: (count, sum, sum of squares) of x over `axis`; sums over batches add."""
  x = x.astype(jnp.float32)
  total = x.sum(axis=axis)
  count = jnp.full_like(total, x.size // total.size)
  return jnp.stack([count, total, jnp.square(x).sum(axis=axis)])


def latent_moments(z: Array) -> Array:
  """float32 [2, 3]: moments of the first latent frame and of the later ones (LATENT_GROUPS)
  of latents z [B, T, ...]."""
  every_axis = tuple(range(z.ndim))
  return jnp.stack([moments(z[:, :1], every_axis), moments(z[:, 1:], every_axis)])


def mean_variance(summed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, variance) from summed moments [3, ...] (count, sum, sum of squares)."""
  count, total, squares = np.asarray(summed, np.float64)
  mean = total / count
  return mean, np.maximum(squares / count - np.square(mean), 0.0)


def latent_group_stats(summed: np.ndarray) -> dict[str, tuple[float, float]]:
  """{group: (mean, std)} of summed latent_moments, for the groups that hold values."""
  out = {}
  for name, group in zip(LATENT_GROUPS, np.asarray(summed, np.float64)):
    if group[0]:
      mean, variance = mean_variance(group)
      out[name] = (float(mean), float(np.sqrt(variance)))
  return out


# --- Temporal chunking (exact) -----------------------------------------------------------

_Apply = Callable[[CausalVAE, Array, blocks.TemporalCache], Any]


def _run_chunked(vae: CausalVAE, x: Array, chunk: int, apply: _Apply) -> Any:
  """apply() over frame 0, then over `chunk`-frame pieces, carrying the conv caches.

  The full pieces run in a `lax.fori_loop` over one fixed-shape step, so live
  memory is the input, the output and one piece's activations. Outputs (a
  pytree of [B, t, ...] arrays) are written into preallocated buffers.
  """
  graphdef, state = nnx.split(vae)

  def step(carry, piece):
    cache = blocks.TemporalCache(carry)
    out = apply(nnx.merge(graphdef, state), piece, cache)
    cache.check_consumed()
    return cache.carry, out

  first_cache = blocks.TemporalCache()
  first_out = apply(nnx.merge(graphdef, state), x[:, :1], first_cache)
  carry = first_cache.carry
  rest = x.shape[1] - 1
  count, tail = divmod(rest, chunk)

  def out_frames(n):  # frames of output per n input frames (static)
    shapes = jax.eval_shape(step, carry, jax.ShapeDtypeStruct(
        x.shape[:1] + (n,) + x.shape[2:], x.dtype))[1]
    return jax.tree.leaves(shapes)[0].shape[1]

  per_chunk = out_frames(chunk) if count else 0
  total = jax.tree.leaves(first_out)[0].shape[1] + count * per_chunk + (
      out_frames(tail) if tail else 0)
  buffers = jax.tree.map(
      lambda y: jnp.zeros(y.shape[:1] + (total,) + y.shape[2:], y.dtype), first_out)
  put = lambda buf, y, at: jax.tree.map(
      lambda b, v: jax.lax.dynamic_update_slice_in_dim(b, v, at, axis=1), buf, y)
  buffers = put(buffers, first_out, 0)
  offset = jax.tree.leaves(first_out)[0].shape[1]

  def body(i, state_):
    carry_, bufs = state_
    piece = jax.lax.dynamic_slice_in_dim(x, 1 + i * chunk, chunk, axis=1)
    carry_, out = step(carry_, piece)
    return carry_, put(bufs, out, offset + i * per_chunk)

  if count:
    carry, buffers = jax.lax.fori_loop(0, count, body, (carry, buffers))
  if tail:
    _, out = step(carry, x[:, 1 + count * chunk:])
    buffers = put(buffers, out, offset + count * per_chunk)
  return buffers


def encode_chunked(vae: CausalVAE, video: Array, chunk_frames: int) -> DiagonalGaussian:
  """`vae.encode(video)` computed `chunk_frames` pixel frames at a time (exact).

  chunk_frames must be a multiple of the temporal factor; the first frame is
  its own chunk, then full chunks, then a shorter last one if needed.
  """
  f = vae.temporal_factor
  check_video_shape(vae.config, video.shape, first=True)
  if chunk_frames < 1 or chunk_frames % f:
    raise ValueError(f'chunk_frames {chunk_frames} must be a positive multiple of the '
                     f'temporal factor {f}')
  out = _run_chunked(vae, video, chunk_frames, lambda m, x, c: tuple(m.encode(x, c)))
  return DiagonalGaussian(*out)


def decode_chunked(vae: CausalVAE, latents: Array, chunk_latents: int) -> Array:
  """`vae.decode(latents)` computed `chunk_latents` latent frames at a time (exact)."""
  if chunk_latents < 1:
    raise ValueError(f'chunk_latents must be >= 1, got {chunk_latents}')
  if latents.ndim != 5:
    raise ValueError(f'latents must be [B, T, h, w, C], got shape {latents.shape}')
  return _run_chunked(vae, latents, chunk_latents, lambda m, z, c: m.decode(z, c))


# --- Spatial tiling (approximate) --------------------------------------------------------


def _tile_starts(size: int, tile: int, overlap: int) -> tuple[list[int], int]:
  """Start offsets of equal tiles covering [0, size) with >= `overlap` overlap."""
  if size <= tile:
    return [0], size
  if not 0 <= overlap < tile:
    raise ValueError(f'tile overlap {overlap} must be in [0, tile size {tile})')
  starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
  return starts, tile


def _edge_ramp(length: int, start: Array, total: int, ramp: int) -> Array:
  """Blend weights along one axis of a tile: linear ramps on edges inside the frame."""
  i = jnp.arange(length, dtype=jnp.float32)
  if ramp <= 0:
    return jnp.ones((length,), jnp.float32)
  up = jnp.minimum(1.0, (i + 0.5) / ramp)
  down = jnp.minimum(1.0, (length - i - 0.5) / ramp)
  w = jnp.where(start > 0, up, 1.0)
  return w * jnp.where(start + length < total, down, 1.0)


def _run_tiled(x: Array, tile: int, overlap: int, scale: tuple[int, int],
               fn: Callable[[Array], Any]) -> Any:
  """fn over overlapping spatial tiles of x, blended with linear ramps over the overlap.

  `scale` = (output pixels per input pixel numerator, denominator): tiles of
  `tile` input pixels become tiles of tile * num / den output pixels.
  """
  num, den = scale
  b, t, h, w, _ = x.shape
  rows, th = _tile_starts(h, tile, overlap)
  cols, tw = _tile_starts(w, tile, overlap)
  grid = np.array([(r, c) for r in rows for c in cols], np.int32)
  out_shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct((b, t, th, tw, x.shape[-1]), x.dtype))
  oth, otw = th * num // den, tw * num // den
  oh, ow = h * num // den, w * num // den
  ramp = overlap * num // den
  acc = jax.tree.map(lambda s: jnp.zeros(s.shape[:2] + (oh, ow) + s.shape[4:], jnp.float32),
                     out_shapes)
  weight = jnp.zeros((oh, ow), jnp.float32)
  starts = jnp.asarray(grid)

  def body(i, state):
    acc_, weight_ = state
    r, c = starts[i, 0], starts[i, 1]
    piece = jax.lax.dynamic_slice(x, (0, 0, r, c, 0), (b, t, th, tw, x.shape[-1]))
    orow, ocol = r * num // den, c * num // den
    wt = (_edge_ramp(oth, orow, oh, ramp)[:, None] * _edge_ramp(otw, ocol, ow, ramp)[None, :])

    def add(a, y):
      at = (0, 0, orow, ocol) + (0,) * (y.ndim - 4)
      cur = jax.lax.dynamic_slice(a, at, y.shape)
      wy = y.astype(jnp.float32) * wt.reshape(wt.shape + (1,) * (y.ndim - 4))
      return jax.lax.dynamic_update_slice(a, cur + wy, at)

    acc_ = jax.tree.map(add, acc_, fn(piece))
    cur_w = jax.lax.dynamic_slice(weight_, (orow, ocol), (oth, otw))
    weight_ = jax.lax.dynamic_update_slice(weight_, cur_w + wt, (orow, ocol))
    return acc_, weight_

  acc, weight = jax.lax.fori_loop(0, len(grid), body, (acc, weight))
  return jax.tree.map(lambda a: a / weight.reshape(weight.shape + (1,) * (a.ndim - 4)), acc)


def encode_tiled(vae: CausalVAE, video: Array, *, tile: int, overlap: int,
                 chunk_frames: int | None = None) -> DiagonalGaussian:
  """Encode in overlapping `tile`-pixel squares (approximate), each optionally chunked.

  tile and overlap are in pixels and must be multiples of the spatial factor.
  The posterior moments of the tiles are blended over the overlaps.
  """
  s = vae.spatial_factor
  check_video_shape(vae.config, video.shape, first=True)
  if tile < s or tile % s or overlap % s:
    raise ValueError(f'tile {tile} and overlap {overlap} must be multiples of the spatial '
                     f'factor {s} (tile >= {s})')
  if chunk_frames is None:
    fn = lambda v: tuple(vae.encode(v))
  else:
    fn = lambda v: tuple(encode_chunked(vae, v, chunk_frames))
  return DiagonalGaussian(*_run_tiled(video, tile, overlap, (1, s), fn))


def decode_tiled(vae: CausalVAE, latents: Array, *, tile: int, overlap: int,
                 chunk_latents: int | None = None) -> Array:
  """Decode in overlapping `tile`-latent squares (approximate), each optionally chunked."""
  if tile < 1:
    raise ValueError(f'tile must be >= 1, got {tile}')
  if chunk_latents is None:
    fn = vae.decode
  else:
    fn = lambda z: decode_chunked(vae, z, chunk_latents)
  return _run_tiled(latents, tile, overlap, (vae.spatial_factor, 1), fn)


# --- LatentCodec -------------------------------------------------------------------------


@flax.struct.dataclass
class VAECodec:
  """The causal VAE as a LatentCodec: video in [-1, 1] <-> normalised latents.

  A pytree whose leaves are the VAE parameters, so jitted functions take it as
  an argument (the weights never become compile-time constants). Encoding
  takes the posterior mean (deterministic). `chunk_frames` pixel frames per
  encode step and `chunk_latents` latent frames per decode step run the video
  chunk by chunk (exact); `tile` / `tile_overlap` in pixels split frames larger
  than `tile` (approximate). Decoded videos are not clipped.
  """
  graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
  state: nnx.State
  config: VAEConfig = flax.struct.field(pytree_node=False)
  chunk_frames: int | None = flax.struct.field(pytree_node=False, default=None)
  chunk_latents: int | None = flax.struct.field(pytree_node=False, default=None)
  tile: int | None = flax.struct.field(pytree_node=False, default=None)
  tile_overlap: int = flax.struct.field(pytree_node=False, default=0)

  @classmethod
  def from_vae(cls, vae: CausalVAE, **options) -> VAECodec:
    graphdef, state = nnx.split(vae)
    return cls(graphdef=graphdef, state=state, config=vae.config, **options)

  @property
  def latent_channels(self) -> int:
    return self.config.latent_channels

  @property
  def spatial_factor(self) -> int:
    return self.config.spatial_factor

  @property
  def temporal_factor(self) -> int:
    return self.config.temporal_factor

  def _vae(self) -> CausalVAE:
    return nnx.merge(self.graphdef, self.state)

  def encode(self, video: Array) -> Array:
    vae = self._vae()
    h, w = video.shape[2:4]
    if self.tile is not None and max(h, w) > self.tile:
      posterior = encode_tiled(vae, video, tile=self.tile, overlap=self.tile_overlap,
                               chunk_frames=self.chunk_frames)
    elif self.chunk_frames is not None:
      posterior = encode_chunked(vae, video, self.chunk_frames)
    else:
      posterior = vae.encode(video)
    return normalize_latents(posterior.mean, self.config)

  def decode(self, latents: Array) -> Array:
    vae = self._vae()
    z = denormalize_latents(latents.astype(jnp.float32), self.config)
    s = self.spatial_factor
    if self.tile is not None and max(z.shape[2:4]) * s > self.tile:
      return decode_tiled(vae, z, tile=self.tile // s, overlap=self.tile_overlap // s,
                          chunk_latents=self.chunk_latents)
    if self.chunk_latents is not None:
      return decode_chunked(vae, z, self.chunk_latents)
    return vae.decode(z)


# --- Official parameter names ------------------------------------------------------------

# Our attribute -> official module path (the official wraps these in lists and
# nn.Conv3d holders).
_RENAMES = {
    'downsampler': 'downsamplers.0.conv',
    'temporal_downsampler': 'temporal_downsamplers.0.conv',
    'upsampler': 'upsamplers.0',
    'temporal_upsampler': 'temporal_upsamplers.0',
    'to_out': 'to_out.0',
}


def official_names(vae: CausalVAE) -> dict[tuple[Any, ...], tuple[str, tuple[int, ...]]]:
  """Our parameter path -> (official state-dict key, axes to transpose the torch array by).

  `np.transpose(torch_array, axes)` gives our layout; `np.argsort(axes)` goes back.
  """
  names = {}
  for path, module in nnx.iter_modules(vae):
    prefix = '.'.join(_RENAMES.get(str(p), str(p)) for p in path)
    prefix = prefix + '.' if prefix else ''
    if isinstance(module, blocks.CausalConv3d):
      names[path + ('kernel',)] = (prefix + 'conv.weight', (2, 3, 4, 1, 0))
      if module.bias is not None:
        names[path + ('bias',)] = (prefix + 'conv.bias', (0,))
    elif isinstance(module, blocks.Linear):
      names[path + ('kernel',)] = (prefix + 'weight', (1, 0))
      names[path + ('bias',)] = (prefix + 'bias', (0,))
    elif isinstance(module, blocks.GroupNorm):
      names[path + ('scale',)] = (prefix + 'weight', (0,))
      names[path + ('bias',)] = (prefix + 'bias', (0,))
  return names


def count_params(vae: CausalVAE) -> int:
  """Number of parameters (works on `nnx.eval_shape` models: nothing is allocated)."""
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(vae, nnx.Param)))
