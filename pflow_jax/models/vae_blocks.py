"""Building blocks of the causal video VAE (official video_vae/, channels-last).

Every conv is causal in time: the past side of the time axis is padded (zeros,
as in the official model, whose CausalConv3d always runs with pad_mode
'constant'), the future side never is, so output frame t sees input frames <= t.
Spatial padding is symmetric zeros. Norms are per frame, attention is per frame
(spatial only), so nothing but the convs mixes frames.

Temporal chunking: a `TemporalCache` carries, for every causal conv in call
order, the input frames that the next chunk's first outputs still need. With
it, running the video chunk by chunk gives the same numbers as running it whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pflow_jax.parallel import rules

Array = jax.Array
VIDEO_AXES = ('batch', 'frames', 'height', 'width', 'channels')

# The official init (timm trunc_normal_ with std .02 and the default absolute
# cut-offs [-2, 2]) is a plain normal in practice: the cut is at 100 std.
_KERNEL_INIT = nnx.initializers.normal(0.02)


class TemporalCache:
  """Conv context carried from one temporal chunk of a video to the next.

  `TemporalCache()` starts a video: convs pad with zeros and the decoder's
  temporal upsamplers drop their first frame (the first latent frame is one
  pixel frame). `TemporalCache(previous.carry)` continues it. Convs read and
  append entries in call order, which is the same on every chunk, so the carry
  is a flat list of arrays (a pytree, usable as a `lax` loop carry).
  """

  def __init__(self, carry: Sequence[Array] | None = None):
    self._past = None if carry is None else list(carry)
    self.carry: list[Array] = []

  @property
  def is_first(self) -> bool:
    return self._past is None

  def past(self) -> Array | None:
    """The next conv's carried frames, or None on the first chunk."""
    if self._past is None:
      return None
    i = len(self.carry)
    if i >= len(self._past):
      raise ValueError(f'temporal cache has {len(self._past)} entries but more '
                       'causal convs ran: the carry is from a different model')
    return self._past[i]

  def check_consumed(self) -> None:
    if self._past is not None and len(self._past) != len(self.carry):
      raise ValueError(f'temporal cache has {len(self._past)} entries but '
                       f'{len(self.carry)} causal convs ran')


def is_first_chunk(cache: TemporalCache | None) -> bool:
  return cache is None or cache.is_first


class CausalConv3d(nnx.Module):
  """3D conv, causal in time. Kernel [t, h, w, in, out] (torch: [out, in, t, h, w])."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] = 1, *, use_bias: bool = True,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
    # An int stride is temporal only, as in the official CausalConv3d.
    self.stride = (stride, 1, 1) if isinstance(stride, int) else tuple(stride)
    if kernel[1] % 2 == 0 or kernel[2] % 2 == 0:
      raise ValueError(f'spatial kernel sizes must be odd, got {kernel}')
    self.kernel_size = kernel
    self.dtype = dtype
    self.kernel = nnx.Param(
        _KERNEL_INIT(rngs.params(), kernel + (in_channels, out_channels), param_dtype),
        out_sharding=(None, None, None, 'conv_in', 'conv_out'))
    self.bias = nnx.Param(
        nnx.initializers.zeros(rngs.params(), (out_channels,), param_dtype),
        out_sharding=('conv_out',)) if use_bias else None

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    kt, kh, kw = self.kernel_size
    st = self.stride[0]
    x = x.astype(self.dtype)
    if kt > 1:
      past = cache.past() if cache is not None else None
      if past is None:  # causal zero padding: kt - 1 frames before the first
        past = jnp.zeros(x.shape[:1] + (kt - 1,) + x.shape[2:], x.dtype)
      x = jnp.concatenate([past.astype(x.dtype), x], axis=1)
      if cache is not None:
        # Keep the frames from the next unconsumed stride position onwards:
        # kt - 1 for stride 1, and 1 for a stride-2 conv fed an odd stream.
        n = x.shape[1]
        keep = n - st * ((n - kt) // st + 1)
        cache.carry.append(x[:, n - keep:])
    y = _conv_as_2d(x, self.kernel[...].astype(self.dtype), self.stride)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def _conv_as_2d(x: Array, kernel: Array, stride: tuple[int, int, int]) -> Array:
  """The 3D conv (no temporal padding, 'same' spatial padding) as one 2D conv.

  The kt temporal taps of each output frame are stacked along channels, so the
  kernel [kt, kh, kw, C, O] acts as a 2D kernel [kh, kw, kt * C, O]: the same
  sums, and several times faster than XLA's 3D convolution on CPU at the
  small channel counts of small VAEs (tests/test_vae.py checks it against
  lax.conv_general_dilated in 3D).
  """
  kt, kh, kw, c, o = kernel.shape
  st, sh, sw = stride
  n, t = x.shape[:2]
  t_out = (t - kt) // st + 1
  taps = [x[:, i:i + st * (t_out - 1) + 1:st] for i in range(kt)]
  stacked = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
  stacked = stacked.reshape((n * t_out,) + stacked.shape[2:])
  y = jax.lax.conv_general_dilated(
      stacked, kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * c, o),
      window_strides=(sh, sw), padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y.reshape((n, t_out) + y.shape[1:])


class GroupNorm(nnx.Module):
  """GroupNorm over (height, width, channels-in-group) of each frame, stats in fp32."""

  def __init__(self, channels: int, num_groups: int, *, epsilon: float = 1e-6,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    if channels % num_groups:
      raise ValueError(f'{channels} channels are not divisible into {num_groups} groups')
    self.num_groups = num_groups
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = nnx.Param(nnx.initializers.ones(rngs.params(), (channels,), param_dtype),
                           out_sharding=('norm',))
    self.bias = nnx.Param(nnx.initializers.zeros(rngs.params(), (channels,), param_dtype),
                          out_sharding=('norm',))

  def __call__(self, x: Array) -> Array:
    *lead, h, w, c = x.shape
    g = x.astype(jnp.float32).reshape(*lead, h, w, self.num_groups, c // self.num_groups)
    axes = (-4, -3, -1)
    mean = g.mean(axes, keepdims=True)
    var = jnp.square(g - mean).mean(axes, keepdims=True)  # biased, as torch
    g = (g - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = g.reshape(x.shape) * self.scale[...].astype(jnp.float32) + self.bias[...].astype(
        jnp.float32)
    return y.astype(self.dtype)


class Linear(nnx.Module):
  """Dense layer with logical axes ('conv_in', 'conv_out'); kernel [in, out] (torch [out, in])."""

  def __init__(self, in_features: int, out_features: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = nnx.Param(
        _KERNEL_INIT(rngs.params(), (in_features, out_features), param_dtype),
        out_sharding=('conv_in', 'conv_out'))
    self.bias = nnx.Param(nnx.initializers.zeros(rngs.params(), (out_features,), param_dtype),
                          out_sharding=('conv_out',))

  def __call__(self, x: Array) -> Array:
    return (x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
            + self.bias[...].astype(self.dtype))


class ResnetBlock(nnx.Module):
  """norm-SiLU-conv twice plus a (1x1x1 conv when widths differ) shortcut."""

  def __init__(self, in_channels: int, out_channels: int, *, num_groups: int, epsilon: float,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = GroupNorm(in_channels, num_groups, epsilon=epsilon, **kw)
    self.conv1 = CausalConv3d(in_channels, out_channels, 3, **kw)
    self.norm2 = GroupNorm(out_channels, num_groups, epsilon=epsilon, **kw)
    self.conv2 = CausalConv3d(out_channels, out_channels, 3, **kw)
    self.conv_shortcut = (CausalConv3d(in_channels, out_channels, 1, **kw)
                          if in_channels != out_channels else None)

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    h = self.conv1(nnx.silu(self.norm1(x)), cache)
    h = self.conv2(nnx.silu(self.norm2(h)), cache)
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x, cache)
    return rules.constrain(x.astype(h.dtype) + h, VIDEO_AXES)


class SpatialAttention(nnx.Module):
  """Single-head self-attention over the pixels of each frame, with a residual.

  The official mid-block attention (diffusers Attention, heads = 1, head dim =
  channels, GroupNorm on the input, softmax upcast to fp32).
  """

  def __init__(self, channels: int, *, num_groups: int, epsilon: float,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.group_norm = GroupNorm(channels, num_groups, epsilon=epsilon, **kw)
    self.to_q = Linear(channels, channels, **kw)
    self.to_k = Linear(channels, channels, **kw)
    self.to_v = Linear(channels, channels, **kw)
    self.to_out = Linear(channels, channels, **kw)

  def __call__(self, x: Array) -> Array:
    b, t, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(b * t, h * w, c)
    q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
    logits = jnp.einsum('bqc,bkc->bqk', q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits * c ** -0.5, axis=-1).astype(v.dtype)
    out = self.to_out(jnp.einsum('bqk,bkc->bqc', probs, v))
    return x.astype(out.dtype) + out.reshape(b, t, h, w, c)


class MidBlock(nnx.Module):
  """resnet, (attention, resnet) at the lowest resolution."""

  def __init__(self, channels: int, *, attention: bool, num_groups: int, epsilon: float,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(num_groups=num_groups, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    self.resnets = nnx.List([ResnetBlock(channels, channels, **kw) for _ in range(2)])
    self.attentions = nnx.List([SpatialAttention(channels, **kw)] if attention else [])

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    x = self.resnets[0](x, cache)
    for attention in self.attentions:
      x = attention(x)
    return self.resnets[1](x, cache)


class SpatialUpsample2x(nnx.Module):
  """Conv to 4x channels, then depth-to-space (channel index c*4 + 2*dy + dx)."""

  def __init__(self, channels: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.conv = CausalConv3d(channels, channels * 4, 3, dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    y = self.conv(x, cache)
    b, t, h, w, c4 = y.shape
    y = y.reshape(b, t, h, w, c4 // 4, 2, 2).transpose(0, 1, 2, 5, 3, 6, 4)
    return y.reshape(b, t, 2 * h, 2 * w, c4 // 4)


class TemporalUpsample2x(nnx.Module):
  """Conv to 2x channels, then depth-to-time (channel index c*2 + p -> frame 2t + p).

  On a video's first chunk the first output frame is dropped, so n latent
  frames become 2n - 1: the first latent frame stands for one pixel frame.
  """

  def __init__(self, channels: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.conv = CausalConv3d(channels, channels * 2, 3, dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    first = is_first_chunk(cache)
    y = self.conv(x, cache)
    b, t, h, w, c2 = y.shape
    y = y.reshape(b, t, h, w, c2 // 2, 2).transpose(0, 1, 5, 2, 3, 4)
    y = y.reshape(b, 2 * t, h, w, c2 // 2)
    return y[:, 1:] if first else y


class DownBlock(nnx.Module):
  """Encoder level: resnets, then optional 2x spatial and 2x temporal strided convs."""

  def __init__(self, in_channels: int, out_channels: int, *, num_layers: int,
               spatial_down: bool, temporal_down: bool, num_groups: int, epsilon: float,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([
        ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                    num_groups=num_groups, epsilon=epsilon, **kw) for i in range(num_layers)])
    self.downsampler = (CausalConv3d(out_channels, out_channels, 3, (1, 2, 2), **kw)
                        if spatial_down else None)
    self.temporal_downsampler = (CausalConv3d(out_channels, out_channels, 3, (2, 1, 1), **kw)
                                 if temporal_down else None)

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    for resnet in self.resnets:
      x = resnet(x, cache)
    if self.downsampler is not None:
      x = rules.constrain(self.downsampler(x, cache), VIDEO_AXES)
    if self.temporal_downsampler is not None:
      x = rules.constrain(self.temporal_downsampler(x, cache), VIDEO_AXES)
    return x


class UpBlock(nnx.Module):
  """Decoder level: resnets, then optional 2x spatial and 2x temporal upsampling."""

  def __init__(self, in_channels: int, out_channels: int, *, num_layers: int,
               spatial_up: bool, temporal_up: bool, num_groups: int, epsilon: float,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([
        ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                    num_groups=num_groups, epsilon=epsilon, **kw) for i in range(num_layers)])
    self.upsampler = SpatialUpsample2x(out_channels, **kw) if spatial_up else None
    self.temporal_upsampler = TemporalUpsample2x(out_channels, **kw) if temporal_up else None

  def __call__(self, x: Array, cache: TemporalCache | None = None) -> Array:
    for resnet in self.resnets:
      x = resnet(x, cache)
    if self.upsampler is not None:
      x = rules.constrain(self.upsampler(x, cache), VIDEO_AXES)
    if self.temporal_upsampler is not None:
      x = rules.constrain(self.temporal_upsampler(x, cache), VIDEO_AXES)
    return x
