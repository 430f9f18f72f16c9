"""PatchGAN discriminator for VAE training (official video_vae/modeling_discriminator.py).

The official default (`NLayerDiscriminator`, pix2pix's PatchGAN): every frame is
judged on its own by 4x4 convs, stride 2 for the first `num_layers`, then two
stride-1 convs down to one logit per patch, LeakyReLU(0.2), and InstanceNorm
(no affine parameters, as torch's default) after every conv but the first and
the last. Weights ~ N(0, 0.02), biases 0. Channels-last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

_INIT = nnx.initializers.normal(0.02)


class _Conv(nnx.Module):
  """4x4 conv with padding 1, kernel [4, 4, in, out]."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, *, use_bias: bool,
               rngs: nnx.Rngs):
    self.stride = stride
    self.kernel = nnx.Param(nnx.with_partitioning(_INIT, (None, None, 'conv_in', 'conv_out'))(
        rngs.params(), (4, 4, in_channels, out_channels), jnp.float32))
    self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, ('conv_out',))(
        rngs.params(), (out_channels,), jnp.float32)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    y = jax.lax.conv_general_dilated(x, self.kernel[...], (self.stride, self.stride),
                                     ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y if self.bias is None else y + self.bias[...]


def instance_norm(x: Array, eps: float = 1e-5) -> Array:
  """Per-sample, per-channel normalisation over H and W (torch InstanceNorm2d, no affine)."""
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class PatchDiscriminator(nnx.Module):
  """Frames [B, T, H, W, C] in [-1, 1] -> patch logits [B, T, h, w] (fp32)."""

  def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 4, *,
               rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {num_layers}')
    widths = [width * min(2 ** n, 8) for n in range(num_layers + 1)]
    convs = [_Conv(in_channels, widths[0], 2, use_bias=True, rngs=rngs)]
    for n in range(1, num_layers):
      # No bias before InstanceNorm would be redundant; the official keeps it
      # (use_bias is False only for BatchNorm), so do we.
      convs.append(_Conv(widths[n - 1], widths[n], 2, use_bias=True, rngs=rngs))
    convs.append(_Conv(widths[num_layers - 1], widths[num_layers], 1, use_bias=True, rngs=rngs))
    convs.append(_Conv(widths[num_layers], 1, 1, use_bias=True, rngs=rngs))
    self.convs = nnx.List(convs)

  def __call__(self, video: Array) -> Array:
    if video.ndim != 5:
      raise ValueError(f'video must be [B, T, H, W, C], got shape {video.shape}')
    b, t = video.shape[:2]
    x = video.reshape((b * t,) + video.shape[2:]).astype(jnp.float32)
    last = len(self.convs) - 1
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if i == last:
        break
      if i > 0:
        x = instance_norm(x)
      x = jax.nn.leaky_relu(x, 0.2)
    return x[..., 0].reshape((b, t) + x.shape[1:3])
