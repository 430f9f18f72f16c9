"""Latent codecs: pixel video <-> the normalised latents the DiT is trained on.

Every codec maps float video in [-1, 1], [B, T, H, W, C], to latents
[B, T', H', W', C'] that are roughly zero-mean and unit-variance, and back.
`SpaceToDepthCodec` is fixed and lossless (the CPU-sized default): each
factor x factor pixel block is folded into channels, then normalised like the
official VAE latents, `latent = (z - shift) * scale`. `VAECodec` wraps a
trained causal VAE.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax

from pflow_jax.models import vae_load


@runtime_checkable
class LatentCodec(Protocol):
  """The encode/decode interface shared by the space-to-depth codec and the VAE."""
  latent_channels: int
  spatial_factor: int
  temporal_factor: int

  def encode(self, video: jax.Array) -> jax.Array:
    """Float video in [-1, 1], [B, T, H, W, C] -> normalised latents [B, T', H', W', C']."""

  def decode(self, latents: jax.Array) -> jax.Array:
    """Normalised latents -> float video in [-1, 1] (the inverse of encode)."""


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SpaceToDepthCodec:
  """Folds factor x factor pixel blocks into channels: [B,T,H,W,C] -> [B,T,H/f,W/f,f*f*C].

  Latent channel (dy * f + dx) * C + c holds pixel (f*i + dy, f*j + dx, c).
  A pytree without leaves, so it passes through `jax.jit` like a VAECodec.
  """
  factor: int = 4
  channels: int = 1
  shift: float = 0.0   # latents = (pixels - shift) * scale; the data's stats live in the
  scale: float = 1.0   # config (latent.shift / latent.scale), not here
  temporal_factor: ClassVar[int] = 1

  def __post_init__(self):
    if self.factor < 1 or self.channels < 1:
      raise ValueError(f'factor and channels must be >= 1, got {self.factor}, {self.channels}')
    if not self.scale > 0:
      raise ValueError(f'scale must be positive, got {self.scale}')

  @property
  def spatial_factor(self) -> int:
    return self.factor

  @property
  def latent_channels(self) -> int:
    return self.channels * self.factor ** 2

  def encode(self, video: jax.Array) -> jax.Array:
    if video.ndim != 5 or video.shape[-1] != self.channels:
      raise ValueError(f'encode expects video [B, T, H, W, {self.channels}], got shape '
                       f'{video.shape}')
    b, t, h, w, c = video.shape
    f = self.factor
    if h % f or w % f:
      raise ValueError(f'video height and width {h}x{w} must be divisible by the '
                       f'space-to-depth factor {f}')
    z = video.reshape(b, t, h // f, f, w // f, f, c).transpose(0, 1, 2, 4, 3, 5, 6)
    z = z.reshape(b, t, h // f, w // f, f * f * c)
    return (z - self.shift) * self.scale

  def decode(self, latents: jax.Array) -> jax.Array:
    if latents.ndim != 5 or latents.shape[-1] != self.latent_channels:
      raise ValueError(f'decode expects latents [B, T, H, W, {self.latent_channels}], got '
                       f'shape {latents.shape}')
    b, t, h, w, _ = latents.shape
    f, c = self.factor, self.channels
    z = latents / self.scale + self.shift
    z = z.reshape(b, t, h, w, f, f, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return z.reshape(b, t, h * f, w * f, c)


def normalisation(codec: LatentCodec) -> dict[str, float] | None:
  """The VAE latent normalisation constants a codec applies (None for space-to-depth)."""
  vae_config = getattr(codec, 'config', None)
  if vae_config is None:
    return None
  return {k: float(getattr(vae_config, k)) for k in (
      'first_frame_shift', 'first_frame_scale', 'video_shift', 'video_scale')}


def make_codec(config: Mapping[str, Any]) -> LatentCodec:
  """The codec named by `config['kind']` (the `latent` section of the experiment config).

  'vae' loads the EMA weights of the latest checkpoint in `config['vae_workdir']`
  and checks its factors and channels against the config.
  """
  kind = config['kind']
  if kind == 'space_to_depth':
    return SpaceToDepthCodec(factor=int(config['factor']), channels=int(config['pixel_channels']),
                             shift=float(config['shift']), scale=float(config['scale']))
  if kind == 'vae':
    return vae_load.load_codec(config)
  raise ValueError(f"unknown latent codec kind {kind!r}; known: 'space_to_depth', 'vae'")
