"""The Pyramid Flow DiTs, channels-last: the SD3 MM-DiT (`PyramidDiffusionMMDiT`) and
miniFLUX (`PyramidFluxTransformer`), selected by DiTConfig.family.

Architecture (pyramid_dit/mmdit_modules/ of jy0205/Pyramid-Flow, as built by
`build_pyramid_dit('pyramid_mmdit', ...)` from the released config):
- Patch embedding: 2x2 patches of each latent frame -> Linear (the official
  Conv2d), plus a fixed 2D sincos embedding of the token's spatial position.
- Conditioning: sinusoidal timestep (256, cos first) -> MLP, plus pooled text ->
  MLP, summed (`time_text_embed`); the text sequence is projected by
  `context_embedder`.
- MM-DiT blocks: text and video streams with separate weights, one joint
  attention over [text; video] with RMSNorm on q and k per head; adaLN-Zero on
  both streams; the last block is `context_pre_only` (its text stream only
  feeds keys/values). Then `norm_out` (adaLN continuous) and `proj_out`.
- Positions (official `PatchEmbed3D.cropped_pos_embed` with
  interp_condition_pos=True, and the temporal RoPE of `merge_input`):
  * spatial: the sincos table of a `pos_embed_max_size`^2 grid whose cell k
    sits at k * base_size / pos_embed_max_size (base_size = sample_size /
    patch_size), center-cropped to the *reference* token grid; a clip smaller
    than the reference gets that crop bilinearly resized (align_corners=False)
    to its own size. Officially the reference is the target clip of the
    current stage (the last clip of the sequence): a stage's target is cropped
    at its own size, and only lower-resolution history clips of the temporal
    pyramid are interpolated. `full_size` names the reference grid.
  * temporal: RoPE over the whole head dim (`rope_axes_dim=(64,)`, theta 1e4,
    interleaved pairs) with the frame index (running over concatenated clips);
    text tokens sit at index 0.
  * attention mask: padded text keys are masked; with `use_temporal_causal`
    a query attends to keys whose frame index is <= its own (text = frame 0).
- Initialisation as official: xavier-uniform Linears with zero bias, normal(.02)
  for the conditioning embedders and `context_embedder`, zeros for every adaLN
  projection, `norm_out.linear` and `proj_out` (so the model outputs 0 at init).

miniFLUX (family='flux', pyramid_dit/flux_modules/) differs in four places:
- no sincos embedding (`pos_embed_type='none'`): RoPE over (frame, y, x) with
  `rope_axes_dim=(16, 24, 24)`, positions interpolated by the same rule, text
  at (0, 0, 0); the patch projection is named `x_embedder`;
- every double-stream block keeps its text stream (none is context_pre_only),
  and q/k RMSNorms use eps 1e-6 (SD3: 1e-5);
- `num_single_layers` single-stream blocks follow over the joint [text; video]
  sequence: one adaLN-Zero (shift, scale, gate), attention and a GELU MLP
  side by side from the same normed input, `proj_out` of both concatenated,
  one gated residual; the video part goes to `norm_out`/`proj_out`;
- pooled text from CLIP-L (768) and a 2x2 patch of 16 channels (64 inputs).

Official state dict -> our parameters (torch Linear weight [out, in] = our
`kernel` [in, out] transposed; biases equal; `transformer_blocks.{i}` is
('transformer_blocks', i)):
  pos_embed.proj.weight [D, C, p, p]      -> pos_embed.proj.kernel [p*p*C, D]
                                             = weight.permute(2, 3, 1, 0).reshape(p*p*C, D)
  pos_embed.pos_embed (buffer)            -> not stored (recomputed from the config)
  time_text_embed.{timestep,text}_embedder.linear_{1,2}, context_embedder,
  transformer_blocks.{i}.norm1.linear, .norm1_context.linear,
  .attn.{to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_add_out},
  norm_out.linear, proj_out               -> same path (.kernel = weight.T, .bias)
  transformer_blocks.{i}.attn.to_out.0    -> transformer_blocks.{i}.attn.to_out
  transformer_blocks.{i}.attn.norm_{q,k,add_q,add_k}.weight -> ...norm_{...}.scale
  transformer_blocks.{i}.ff.net.0.proj    -> transformer_blocks.{i}.ff.proj_in
  transformer_blocks.{i}.ff.net.2         -> transformer_blocks.{i}.ff.proj_out
  (the same for ff_context). proj_out's outputs are ordered (p1, p2, c) in both.
miniFLUX's extra keys: `x_embedder` -> x_embedder.proj; `single_transformer_blocks.{i}.
{norm.linear, proj_mlp, proj_out, attn.to_q, attn.to_k, attn.to_v}` -> same path (.kernel =
weight.T), `...attn.norm_{q,k}.weight` -> `...attn.norm_{q,k}.scale`; proj_out's input is
[attention (heads x head_dim); MLP hidden] in that order in both.
Logical axis names are listed in layers.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pflow_jax.models import layers
from pflow_jax.parallel import rules

Array = jax.Array

TIMESTEP_FEATURES = 256  # sinusoidal timestep features (official Timesteps(256))


# Block rematerialisation policies, lightest memory last but one ('offload' moves what
# 'dots' keeps to host memory). A dot "with no batch dims" is a projection
# ([B, L, D] x [D, F]); attention's scores and weighted sum have batch dims.
REMAT_POLICIES = {
    'none': None,
    'dots': lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'full': lambda: jax.checkpoint_policies.nothing_saveable,
    'offload': lambda: jax.checkpoint_policies.offload_dot_with_no_batch_dims(
        'device', 'pinned_host'),
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """DiT hyperparameters; names follow the official config keys, defaults are the
  released pyramid-flow-sd3 model (384p and 768p share it).

  sample_size: latent size the sincos grid is scaled for (base_size =
    sample_size / patch_size tokens span the unit range of SD3's grid).
  patch_size: spatial patch size (tokens are patch x patch x in_channels).
  in_channels: latent channels (also the output channels).
  num_layers: MM-DiT blocks (the last one is context_pre_only).
  num_attention_heads, attention_head_dim: hidden size = their product.
  joint_attention_dim: width of the text sequence features (T5: 4096).
  caption_projection_dim: width the text sequence is projected to; it must
    equal the hidden size (the text stream runs at model width).
  pooled_projection_dim: width of the pooled text features (CLIP-L+G: 2048).
  pos_embed_max_size: side of the sincos position grid (tokens), from which
    the reference grid is center-cropped.
  pos_embed_type: 'sincos' (spatial absolute embedding, SD3) or 'none'.
  rope_axes_dim: RoPE widths per position axis. None: (attention_head_dim,),
    rotation by frame index (the SD3 variant); three entries rotate by
    (frame, y, x) (miniFLUX: (16, 24, 24)); () for none. The entries must sum
    to attention_head_dim.
  rope_theta: RoPE base.
  qk_norm: 'rms_norm' (per-head RMSNorm on q and k) or None.
  use_temporal_causal: mask attention block-causally over frame indices.
  mlp_ratio: MLP hidden = mlp_ratio * hidden size.
  attention: attention implementation, 'xla' or 'cudnn' (layers.attention).
  sequence_parallel: 'none' or 'ulysses': how attention runs when the mesh's
    sequence axis shards the tokens (parallel/sequence.py); the heads of each
    device must divide by that axis.
  remat: what each block keeps for the backward pass (REMAT_POLICIES): 'none'
    keeps every activation; 'dots' keeps the projections' outputs and recomputes
    attention and the elementwise work; 'full' keeps only the block's input and
    recomputes the block; 'offload' keeps the projections' outputs in pinned
    host memory (GPU/TPU backends). True / False (older configs) mean 'full' / 'none'.
  scan_blocks: run each stretch of identical blocks as one `lax.scan` over their
    parameters, stacked inside the step (the stored parameters keep their
    per-block names). One block is compiled instead of every block, and the
    compiled memory shows what remat saves, which XLA's CPU compile of an
    unrolled stack does not (benchmarks/remat_cpu.py). Same numbers either way.
  history_conditioning: how the temporal pyramid's history tokens (and the
    text stream) are modulated: 'timestep' (official: by the target's timestep
    embedding, like every token) or 'clean' (by the embedding of timestep 0,
    as what they are: clean frames). 'clean' makes their keys and values
    independent of the target, so autoregressive sampling caches them.
  family: 'sd3' (num_layers MM-DiT blocks, the last context_pre_only) or
    'flux' (num_layers double-stream blocks, then num_single_layers
    single-stream blocks); see the module docstring.
  num_single_layers: FLUX single-stream blocks (0 for 'sd3').
  """
  sample_size: int = 128
  patch_size: int = 2
  in_channels: int = 16
  num_layers: int = 24
  num_attention_heads: int = 24
  attention_head_dim: int = 64
  joint_attention_dim: int = 4096
  caption_projection_dim: int = 1536
  pooled_projection_dim: int = 2048
  pos_embed_max_size: int = 192
  pos_embed_type: str = 'sincos'
  rope_axes_dim: tuple[int, ...] | None = None
  rope_theta: float = 10000.0
  qk_norm: str | None = 'rms_norm'
  use_temporal_causal: bool = True
  mlp_ratio: float = 4.0
  attention: str = 'xla'
  sequence_parallel: str = 'none'
  remat: str = 'none'
  scan_blocks: bool = False
  history_conditioning: str = 'timestep'
  family: str = 'sd3'
  num_single_layers: int = 0

  def __post_init__(self):
    if isinstance(self.remat, bool):
      object.__setattr__(self, 'remat', 'full' if self.remat else 'none')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}')
    axes = (self.attention_head_dim,) if self.rope_axes_dim is None else self.rope_axes_dim
    object.__setattr__(self, 'rope_axes_dim', tuple(axes))
    hidden = self.hidden_size
    if self.caption_projection_dim != hidden:
      raise ValueError(f'caption_projection_dim {self.caption_projection_dim} must equal the '
                       f'hidden size num_attention_heads * attention_head_dim = {hidden}')
    if self.pos_embed_type not in ('sincos', 'none'):
      raise ValueError(f"pos_embed_type must be 'sincos' or 'none', got {self.pos_embed_type!r}")
    if self.pos_embed_type == 'sincos' and hidden % 4:
      raise ValueError(f'the 2D sincos embedding needs a hidden size divisible by 4, got {hidden}')
    if len(self.rope_axes_dim) not in (0, 1, 3):
      raise ValueError(f'rope_axes_dim must have 0, 1 (frame) or 3 (frame, y, x) entries, '
                       f'got {self.rope_axes_dim}')
    if self.rope_axes_dim and sum(self.rope_axes_dim) != self.attention_head_dim:
      raise ValueError(f'rope_axes_dim {self.rope_axes_dim} must sum to attention_head_dim '
                       f'{self.attention_head_dim}')
    if self.qk_norm not in ('rms_norm', None):
      raise ValueError(f"qk_norm must be 'rms_norm' or None, got {self.qk_norm!r}")
    if self.attention not in layers.ATTENTION_IMPLS:
      raise ValueError(f'attention must be one of {layers.ATTENTION_IMPLS}, got {self.attention!r}')
    if self.sequence_parallel not in layers.SEQUENCE_PARALLEL:
      raise ValueError(f'sequence_parallel must be one of {layers.SEQUENCE_PARALLEL}, got '
                       f'{self.sequence_parallel!r}')
    if self.history_conditioning not in ('timestep', 'clean'):
      raise ValueError(f"history_conditioning must be 'timestep' or 'clean', got "
                       f'{self.history_conditioning!r}')
    if self.family not in ('sd3', 'flux'):
      raise ValueError(f"family must be 'sd3' or 'flux', got {self.family!r}")
    if self.num_single_layers < 0 or (self.family == 'sd3' and self.num_single_layers):
      raise ValueError(f'num_single_layers {self.num_single_layers}: single-stream blocks '
                       "exist only in family 'flux' (and never fewer than 0)")
    if self.sample_size % self.patch_size:
      raise ValueError(f'sample_size {self.sample_size} is not divisible by patch_size '
                       f'{self.patch_size}')

  @property
  def hidden_size(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @property
  def qk_norm_eps(self) -> float:
    """The q/k RMSNorm epsilon of the official family."""
    return 1e-6 if self.family == 'flux' else 1e-5


def _reference_coords(size: int, ref: int) -> np.ndarray:
  """Where the `size` cells of a resized axis sit on a `ref`-cell axis.

  torch's linear interpolation with align_corners=False (the official rule for
  both the sincos table and RoPE positions): (i + 0.5) * ref / size - 0.5,
  clamped to [0, ref - 1]; the identity when size == ref.
  """
  if size == ref:
    return np.arange(size, dtype=np.float64)
  return np.clip((np.arange(size) + 0.5) * (ref / size) - 0.5, 0.0, ref - 1.0)


def clip_positions(num_frames: int, grid: tuple[int, int], ref_grid: tuple[int, int],
                   frame_offset: int = 0) -> np.ndarray:
  """Token positions [T*h*w, 3] = (frame, y, x) of a clip, on the reference token grid.

  Tokens are ordered frame-major then row-major, as the patch embedding emits them.
  """
  ys = _reference_coords(grid[0], ref_grid[0])
  xs = _reference_coords(grid[1], ref_grid[1])
  t = np.arange(num_frames, dtype=np.float64) + frame_offset
  tt, yy, xx = np.meshgrid(t, ys, xs, indexing='ij')
  return np.stack([tt, yy, xx], axis=-1).reshape(-1, 3).astype(np.float32)


def sincos_spatial_embedding(grid: tuple[int, int], ref_grid: tuple[int, int], dim: int, *,
                             max_size: int, grid_scale: float) -> np.ndarray:
  """The official spatial position embedding [h*w, dim] of an h x w token grid.

  Crop of the max_size^2 sincos table centred on the reference grid, resized
  bilinearly to (h, w). Both halves of the table depend on one axis only
  (first half: x, second: y), so the bilinear resize is a per-axis linear
  interpolation of 1D tables at the reference coordinates.
  """
  h, w = grid
  ref_h, ref_w = ref_grid
  if ref_h > max_size or ref_w > max_size:
    raise ValueError(f'reference token grid {ref_grid} exceeds pos_embed_max_size {max_size}')

  def axis_table(size, ref):
    coords = _reference_coords(size, ref)
    offset = (max_size - ref) // 2
    lo = np.floor(coords)
    frac = (coords - lo)[:, None]
    half = dim // 2
    return (1 - frac) * _sincos_np((offset + lo) * grid_scale, half) + frac * _sincos_np(
        (offset + lo + 1) * grid_scale, half)

  ey = axis_table(h, ref_h)
  ex = axis_table(w, ref_w)
  emb = np.concatenate([np.broadcast_to(ex[None, :, :], (h, w, dim // 2)),
                        np.broadcast_to(ey[:, None, :], (h, w, dim // 2))], axis=-1)
  return emb.reshape(h * w, dim).astype(np.float32)


def _sincos_np(positions: np.ndarray, dim: int) -> np.ndarray:
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  args = positions[:, None] * omega[None, :]
  return np.concatenate([np.sin(args), np.cos(args)], axis=-1)


def joint_attention_mask(text_mask: Array, video_length: int, *,
                         frames: Array | None = None) -> Array:
  """Mask over the joint [text; video] sequence, bool [B, 1 | Lq, Lk].

  Padded text keys are masked. With `frames` ([B | 1, video_length], the frame
  index of each video token) a query attends only to keys of the same or an
  earlier frame, text counting as frame 0 (the official temporal causal mask).
  """
  text_mask = text_mask.astype(bool)
  batch = text_mask.shape[0]
  keys = jnp.concatenate([text_mask, jnp.ones((batch, video_length), bool)], axis=1)
  if frames is None:
    return keys[:, None, :]
  if frames.shape[-1] != video_length:
    raise ValueError(f'frames cover {frames.shape[-1]} tokens, video has {video_length}')
  frames = jnp.broadcast_to(frames, (batch, video_length))
  order = jnp.concatenate([jnp.zeros_like(text_mask, jnp.float32), frames], axis=1)
  return keys[:, None, :] & (order[:, :, None] >= order[:, None, :])


class PatchEmbed(nnx.Module):
  """Patchify each frame, project to the model width, add spatial positions."""

  def __init__(self, cfg: DiTConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    p = cfg.patch_size
    self.proj = layers.Dense(p * p * cfg.in_channels, cfg.hidden_size, ('patch', 'embed'),
                             dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, latents: Array, *, full_size: tuple[int, int] | None = None,
               frame_offset: int = 0) -> tuple[Array, Array]:
    cfg = self.cfg
    p = cfg.patch_size
    if latents.ndim != 5 or latents.shape[-1] != cfg.in_channels:
      raise ValueError(f'latents must be [B, T, H, W, {cfg.in_channels}], got {latents.shape}')
    b, t, h, w, c = latents.shape
    if h % p or w % p:
      raise ValueError(f'latent size {h}x{w} is not divisible by patch_size {p}')
    ref = (h, w) if full_size is None else tuple(full_size)
    if ref[0] % p or ref[1] % p or ref[0] < h or ref[1] < w:
      raise ValueError(f'full_size {ref} must be divisible by patch_size {p} and at least '
                       f'the latent size {(h, w)}')
    grid, ref_grid = (h // p, w // p), (ref[0] // p, ref[1] // p)

    x = latents.reshape(b, t, grid[0], p, grid[1], p, c).transpose(0, 1, 2, 4, 3, 5, 6)
    x = self.proj(x.reshape(b, t * grid[0] * grid[1], p * p * c))
    if cfg.pos_embed_type == 'sincos':
      pos = sincos_spatial_embedding(
          grid, ref_grid, cfg.hidden_size, max_size=cfg.pos_embed_max_size,
          grid_scale=(cfg.sample_size // p) / cfg.pos_embed_max_size)
      x = x.reshape(b, t, grid[0] * grid[1], -1).astype(jnp.float32) + pos
      x = x.reshape(b, t * grid[0] * grid[1], -1).astype(self.dtype)
    positions = clip_positions(t, grid, ref_grid, frame_offset)
    return rules.constrain(x, ('batch', 'length', 'embed')), jnp.asarray(positions)[None]


class CombinedTimestepTextEmbedding(nnx.Module):
  """temb = MLP(sinusoid(t)) + MLP(pooled text) in fp32.

  The official CombinedTimestepConditionEmbeddings.
  """

  def __init__(self, dim: int, pooled_dim: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.timestep_embedder = layers.MLPEmbedder(TIMESTEP_FEATURES, dim, in_axis=None,
                                                param_dtype=param_dtype, rngs=rngs)
    self.text_embedder = layers.MLPEmbedder(pooled_dim, dim, in_axis='text_embed',
                                            param_dtype=param_dtype, rngs=rngs)

  def __call__(self, timesteps: Array, pooled: Array) -> Array:
    t = layers.timestep_embedding(timesteps, TIMESTEP_FEATURES)
    temb = self.timestep_embedder(t) + self.text_embedder(pooled)
    return rules.constrain(temb, ('batch', 'embed'))


def _split_heads(proj: layers.Dense, x: Array, norm: layers.RMSNorm | None, heads: int,
                 head_dim: int, length_axis: str = 'length') -> Array:
  """proj(x) as [B, L, heads, head_dim], RMS-normed per head if norm is given."""
  y = proj(x, length_axis).reshape(*x.shape[:2], heads, head_dim)
  return y if norm is None else norm(y)


def _attend(q: Array, k: Array, v: Array, mask: Array | None,
            attn: JointAttention | SingleAttention) -> Array:
  """Attention of [B, L, H, D] heads with attn's kernel, merged back to [B, Lq, H * D]."""
  qkv_axes = ('batch', 'length', 'heads', 'kv')
  q, k, v = (rules.constrain(a, qkv_axes) for a in (q, k, v))
  out = layers.attention(q, k, v, mask=mask, impl=attn.impl,
                         sequence_parallel=attn.sequence_parallel)
  return rules.constrain(out, qkv_axes).reshape(*out.shape[:2], -1)


def _qk_norm(qk_norm: str | None, head_dim: int, eps: float,
             param_dtype: jnp.dtype) -> layers.RMSNorm | None:
  return None if qk_norm is None else layers.RMSNorm(head_dim, eps=eps, param_dtype=param_dtype)


class JointAttention(nnx.Module):
  """One attention over [text; video] with separate projections per stream."""

  def __init__(self, dim: int, heads: int, head_dim: int, *, qk_norm: str | None,
               qk_norm_eps: float, context_pre_only: bool, impl: str, sequence_parallel: str,
               dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.heads, self.head_dim = heads, head_dim
    self.impl, self.sequence_parallel = impl, sequence_parallel
    inner = heads * head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.to_q = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.to_k = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.to_v = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.add_q_proj = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.add_k_proj = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.add_v_proj = layers.Dense(dim, inner, ('embed', 'heads'), **kw)

    def norm():
      return _qk_norm(qk_norm, head_dim, qk_norm_eps, param_dtype)

    self.norm_q, self.norm_k, self.norm_add_q, self.norm_add_k = norm(), norm(), norm(), norm()
    self.to_out = layers.Dense(inner, dim, ('heads', 'embed'), **kw)
    self.to_add_out = (None if context_pre_only
                       else layers.Dense(inner, dim, ('heads', 'embed'), **kw))

  def _heads(self, proj: layers.Dense, x: Array, norm: layers.RMSNorm | None,
             length_axis: str) -> Array:
    return _split_heads(proj, x, norm, self.heads, self.head_dim, length_axis)

  def _video_qkv(self, x: Array) -> tuple[Array, Array, Array]:
    return (self._heads(self.to_q, x, self.norm_q, 'length'),
            self._heads(self.to_k, x, self.norm_k, 'length'),
            self._heads(self.to_v, x, None, 'length'))

  def _attend(self, q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    return _attend(q, k, v, mask, self)

  def __call__(self, x: Array, context: Array, rope: Array | None, mask: Array | None,
               return_kv: bool = False):
    """(video out, text out | None), plus the joint (k, v) [B, Lt + Lv, H, D] if return_kv."""
    text_len = context.shape[1]
    txt = 'text_length'
    vq, vk, vv = self._video_qkv(x)
    q = jnp.concatenate([self._heads(self.add_q_proj, context, self.norm_add_q, txt), vq], 1)
    k = jnp.concatenate([self._heads(self.add_k_proj, context, self.norm_add_k, txt), vk], 1)
    v = jnp.concatenate([self._heads(self.add_v_proj, context, None, txt), vv], axis=1)
    if rope is not None:
      q, k = layers.apply_rope(q, rope), layers.apply_rope(k, rope)
    out = self._attend(q, k, v, mask)
    video = self.to_out(out[:, text_len:])
    text = None if self.to_add_out is None else self.to_add_out(out[:, :text_len], txt)
    return (video, text, (k, v)) if return_kv else (video, text)

  def cached(self, x: Array, rope: Array | None, kv: tuple[Array, Array],
             mask: Array | None) -> Array:
    """Video out of tokens x attending to the cached (k, v) of earlier tokens and to x.

    rope covers x only; the cache holds keys already rotated.
    """
    q, k, v = self._video_qkv(x)
    if rope is not None:
      q, k = layers.apply_rope(q, rope), layers.apply_rope(k, rope)
    out = self._attend(q, jnp.concatenate([kv[0], k], 1), jnp.concatenate([kv[1], v], 1), mask)
    return self.to_out(out)


# A conditioning group: video tokens [start, stop) modulated by temb [B, D].
Group = tuple[int, int, Array]


class JointTransformerBlock(nnx.Module):
  """MM-DiT block (SD3): adaLN-Zero per stream, joint attention, per-stream MLPs.

  Video tokens may be split into contiguous conditioning groups, each
  modulated by its own embedding (the temporal pyramid's clean history and its
  noisy target); the official model has one group per sample.
  """

  def __init__(self, cfg: DiTConfig, *, context_pre_only: bool, dtype: jnp.dtype,
               param_dtype: jnp.dtype, rngs: nnx.Rngs):
    dim = cfg.hidden_size
    hidden = int(dim * cfg.mlp_ratio)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    self.context_pre_only = context_pre_only
    self.norm1 = layers.AdaLayerNormZero(dim, **kw)
    self.norm1_context = (layers.AdaLayerNormContinuous(dim, dim, **kw) if context_pre_only
                          else layers.AdaLayerNormZero(dim, **kw))
    self.attn = JointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim,
                               qk_norm=cfg.qk_norm, qk_norm_eps=cfg.qk_norm_eps,
                               context_pre_only=context_pre_only, impl=cfg.attention,
                               sequence_parallel=cfg.sequence_parallel, **kw)
    self.ff = layers.FeedForward(dim, hidden, **kw)
    self.ff_context = None if context_pre_only else layers.FeedForward(dim, hidden, **kw)

  def _video_update(self, x: Array, groups: list[Group], attend) -> Array:
    """adaLN-Zero attention and MLP residuals of the video stream, per group."""
    normed = [self.norm1(x[:, a:b], emb) for a, b, emb in groups]
    attn_x = attend(jnp.concatenate([n for n, _ in normed], axis=1))
    parts = [layers.gated_residual(x[:, a:b], mods[0], attn_x[:, a:b])
             for (a, b, _), (_, mods) in zip(groups, normed)]
    h = jnp.concatenate([layers.modulate(layers.layer_norm(xp), mods[1], mods[2])
                         for xp, (_, mods) in zip(parts, normed)], axis=1).astype(self.dtype)
    f = self.ff(h)
    x = jnp.concatenate([layers.gated_residual(xp, mods[3], f[:, a:b])
                         for xp, (a, b, _), (_, mods) in zip(parts, groups, normed)], axis=1)
    return rules.constrain(x, ('batch', 'length', 'embed'))

  def __call__(self, x: Array, context: Array, groups: list[Group], context_temb: Array,
               rope: Array | None, mask: Array | None, return_kv: bool = False):
    """(x, context | None[, (k, v) of [text; video]]) after the block."""
    if self.context_pre_only:
      norm_c = self.norm1_context(context, context_temb)
    else:
      norm_c, (c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(
          context, context_temb)
    outputs = {}

    def attend(norm_x):
      result = self.attn(norm_x, norm_c, rope, mask, return_kv)
      outputs['text'], outputs['kv'] = result[1], result[2] if return_kv else None
      return result[0]

    x = self._video_update(x, groups, attend)
    if self.context_pre_only:
      context = None
    else:
      context = layers.gated_residual(context, c_gate_msa, outputs['text'])
      h = layers.modulate(layers.layer_norm(context), c_shift_mlp, c_scale_mlp).astype(self.dtype)
      context = layers.gated_residual(context, c_gate_mlp, self.ff_context(h, 'text_length'))
      context = rules.constrain(context, ('batch', 'text_length', 'embed'))
    return (x, context, outputs['kv']) if return_kv else (x, context)

  def cached(self, x: Array, temb: Array, rope: Array | None, kv: tuple[Array, Array],
             mask: Array | None) -> Array:
    """The video update of tokens x that attend to cached (k, v) of [text; history] and to x."""
    return self._video_update(x, [(0, x.shape[1], temb)],
                              lambda norm_x: self.attn.cached(norm_x, rope, kv, mask))


class SingleAttention(nnx.Module):
  """The q/k/v projections of a FLUX single-stream block (its output projection is the
  block's proj_out, shared with the MLP)."""

  def __init__(self, dim: int, heads: int, head_dim: int, *, qk_norm: str | None,
               qk_norm_eps: float, impl: str, sequence_parallel: str, dtype: jnp.dtype,
               param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.heads, self.head_dim = heads, head_dim
    self.impl, self.sequence_parallel = impl, sequence_parallel
    inner = heads * head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.to_q = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.to_k = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.to_v = layers.Dense(dim, inner, ('embed', 'heads'), **kw)
    self.norm_q = _qk_norm(qk_norm, head_dim, qk_norm_eps, param_dtype)
    self.norm_k = _qk_norm(qk_norm, head_dim, qk_norm_eps, param_dtype)

  def qkv(self, x: Array, rope: Array | None) -> tuple[Array, Array, Array]:
    """Heads [B, L, H, D] of x, q and k rotated by rope (which covers x)."""
    q = _split_heads(self.to_q, x, self.norm_q, self.heads, self.head_dim)
    k = _split_heads(self.to_k, x, self.norm_k, self.heads, self.head_dim)
    v = _split_heads(self.to_v, x, None, self.heads, self.head_dim)
    if rope is not None:
      q, k = layers.apply_rope(q, rope), layers.apply_rope(k, rope)
    return q, k, v


class SingleTransformerBlock(nnx.Module):
  """FLUX single-stream block over the joint [text; video] sequence.

  One adaLN-Zero (shift, scale, gate) per conditioning group; attention and a
  GELU(tanh) MLP run side by side on the same normed tokens; proj_out maps
  [attention; MLP] back to the width; one gated residual.
  """

  def __init__(self, cfg: DiTConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    dim = cfg.hidden_size
    hidden = int(dim * cfg.mlp_ratio)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = layers.AdaLayerNormZeroSingle(dim, **kw)
    self.proj_mlp = layers.Dense(dim, hidden, ('embed', 'mlp'), **kw)
    self.attn = SingleAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim,
                                qk_norm=cfg.qk_norm, qk_norm_eps=cfg.qk_norm_eps,
                                impl=cfg.attention,
                                sequence_parallel=cfg.sequence_parallel, **kw)
    self.proj_out = layers.Dense(dim + hidden, dim, ('mlp', 'embed'), **kw)

  def _update(self, x: Array, groups: list[Group], attend) -> Array:
    normed = [self.norm(x[:, a:b], emb) for a, b, emb in groups]
    h = jnp.concatenate([n for n, _ in normed], axis=1)
    mlp = jax.nn.gelu(self.proj_mlp(h), approximate=True)
    out = self.proj_out(jnp.concatenate([attend(h), mlp], axis=-1))
    x = jnp.concatenate([layers.gated_residual(x[:, a:b], gate, out[:, a:b])
                         for (a, b, _), (_, gate) in zip(groups, normed)], axis=1)
    return rules.constrain(x, ('batch', 'length', 'embed'))

  def __call__(self, x: Array, groups: list[Group], rope: Array | None, mask: Array | None,
               return_kv: bool = False):
    """x [B, Lt + Lv, D] after the block (and its (k, v) if return_kv)."""
    kv = []

    def attend(h):
      q, k, v = self.attn.qkv(h, rope)
      kv.append((k, v))
      return _attend(q, k, v, mask, self.attn)

    x = self._update(x, groups, attend)
    return (x, kv[0]) if return_kv else x

  def cached(self, x: Array, temb: Array, rope: Array | None, kv: tuple[Array, Array],
             mask: Array | None) -> Array:
    """The update of tokens x that attend to cached (k, v) of [text; history] and to x."""

    def attend(h):
      q, k, v = self.attn.qkv(h, rope)
      return _attend(q, jnp.concatenate([kv[0], k], 1), jnp.concatenate([kv[1], v], 1), mask,
                     self.attn)

    return self._update(x, [(0, x.shape[1], temb)], attend)


def _groups(bounds: tuple[tuple[int, int, bool], ...], temb: Array,
            context_temb: Array) -> list[Group]:
  """Static (start, stop, uses context_temb) token groups with their embeddings."""
  return [(a, b, context_temb if clean else temb) for a, b, clean in bounds]


def _run_block(block: JointTransformerBlock, x, context, temb, context_temb, rope, mask, *,
               bounds: tuple[tuple[int, int, bool], ...]):
  """One double-stream block; bounds group the video tokens."""
  return block(x, context, _groups(bounds, temb, context_temb), context_temb, rope, mask)


def _run_single_block(block: SingleTransformerBlock, x, temb, context_temb, rope, mask, *,
                      bounds: tuple[tuple[int, int, bool], ...]):
  """One single-stream block; bounds group the joint [text; video] tokens."""
  return block(x, _groups(bounds, temb, context_temb), rope, mask)


class Conditions(NamedTuple):
  """What conditions the blocks: temb [B, D] modulates the (target) video tokens;
  context_temb [B, D] the text stream and the history tokens (== temb unless
  history_conditioning is 'clean'); context [B, Lt, D] is the projected text."""
  temb: Array
  context_temb: Array
  context: Array


class PyramidDiT(nnx.Module):
  """Velocity model for every pyramid stage: latents [B, T, H, W, C] -> velocity, same shape.

  Building blocks for callers that assemble their own token sequence (the
  temporal pyramid's history clips + target): `embed_clip` (tokens and
  positions of one clip), `embed_conditions`, `joint_attention_mask`,
  `forward_tokens` (the block stack on any token sequence) and `unpatchify`.
  """

  def __init__(self, cfg: DiTConfig, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    dim = cfg.hidden_size
    p = cfg.patch_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if cfg.family == 'flux':
      self.x_embedder = PatchEmbed(cfg, **kw)
    else:
      self.pos_embed = PatchEmbed(cfg, **kw)
    self.time_text_embed = CombinedTimestepTextEmbedding(dim, cfg.pooled_projection_dim,
                                                         param_dtype=param_dtype, rngs=rngs)
    self.context_embedder = layers.Dense(
        cfg.joint_attention_dim, cfg.caption_projection_dim, ('text_embed', 'embed'),
        kernel_init=nnx.initializers.normal(0.02), **kw)
    self.transformer_blocks = nnx.List([
        JointTransformerBlock(
            cfg, context_pre_only=cfg.family == 'sd3' and i == cfg.num_layers - 1, **kw)
        for i in range(cfg.num_layers)])
    if cfg.num_single_layers:
      self.single_transformer_blocks = nnx.List([
          SingleTransformerBlock(cfg, **kw) for _ in range(cfg.num_single_layers)])
    self.norm_out = layers.AdaLayerNormContinuous(dim, dim, **kw)
    self.proj_out = layers.Dense(dim, p * p * cfg.in_channels, ('embed', 'patch'),
                                 kernel_init=layers.zeros, **kw)

  def embed_clip(self, latents: Array, *, full_size: tuple[int, int] | None = None,
                 frame_offset: int = 0) -> tuple[Array, Array]:
    """Tokens [B, T*h*w, D] and positions [1, T*h*w, 3] (frame, y, x) of one clip.

    full_size: latent (H, W) of the reference grid that positions live on
    (None: the clip's own size). Officially the reference is the target clip
    of the current stage; history clips at a lower resolution get positions
    interpolated onto it. frame_offset: frame index of the clip's first frame.
    """
    embed = self.x_embedder if self.cfg.family == 'flux' else self.pos_embed
    return embed(latents, full_size=full_size, frame_offset=frame_offset)

  def embed_conditions(self, timesteps: Array, text: dict[str, Array]) -> Conditions:
    """The embeddings that condition the blocks, from timesteps [B] and the text dict."""
    cfg = self.cfg
    missing = {'seq', 'mask', 'pooled'} - set(text)
    if missing:
      raise ValueError(f'text condition lacks {sorted(missing)}; needs seq, mask, pooled')
    seq, pooled = text['seq'], text['pooled']
    if seq.ndim != 3 or seq.shape[-1] != cfg.joint_attention_dim:
      raise ValueError(f"text['seq'] must be [B, L, {cfg.joint_attention_dim}], got {seq.shape}")
    if pooled.shape != (seq.shape[0], cfg.pooled_projection_dim):
      raise ValueError(f"text['pooled'] must be [{seq.shape[0]}, {cfg.pooled_projection_dim}], "
                       f'got {pooled.shape}')
    if text['mask'].shape != seq.shape[:2]:
      raise ValueError(f"text['mask'] must be {seq.shape[:2]}, got {text['mask'].shape}")
    if timesteps.shape != (seq.shape[0],):
      raise ValueError(f'timesteps must be [{seq.shape[0]}], got {timesteps.shape}')
    temb = self.time_text_embed(timesteps, pooled)
    context_temb = temb
    if cfg.history_conditioning == 'clean':
      context_temb = self.time_text_embed(jnp.zeros_like(timesteps), pooled)
    return Conditions(temb, context_temb, self.context_embedder(seq, 'text_length'))

  def _rope(self, positions: Array, text_length: int | None) -> Array | None:
    """RoPE angles of [text (at position 0, if text_length); video positions]."""
    cfg = self.cfg
    if not cfg.rope_axes_dim:
      return None
    axes = positions[..., :1] if len(cfg.rope_axes_dim) == 1 else positions
    if text_length:
      text_axes = jnp.zeros((axes.shape[0], text_length, axes.shape[-1]), axes.dtype)
      axes = jnp.concatenate([text_axes, axes], axis=1)
    return layers.rope_angles(axes, cfg.rope_axes_dim, cfg.rope_theta)

  def _checkpointed(self, run_block, bounds: tuple[tuple[int, int, bool], ...]):
    """run_block with its static bounds bound, rematerialised by cfg.remat's policy
    (nnx.remat takes positional arguments only)."""
    run = lambda *args: run_block(*args, bounds=bounds)  # noqa: E731
    if self.cfg.remat == 'none':
      return run
    return nnx.remat(run, policy=REMAT_POLICIES[self.cfg.remat]())

  def _blocks(self, x: Array, cond: Conditions, bounds: tuple[tuple[int, int, bool], ...],
              rope: Array | None, mask: Array | None) -> Array:
    run = self._checkpointed(_run_block, bounds)
    x, context = self._run_stack(
        lambda block, x, context: run(block, x, context, cond.temb, cond.context_temb, rope,
                                      mask),
        list(self.transformer_blocks), (x, cond.context))
    if not self.cfg.num_single_layers:
      return x
    # The text joins the video stream, modulated like the other context tokens.
    text = context.shape[1]
    joint = ((0, text, True),) + tuple((a + text, b + text, clean) for a, b, clean in bounds)
    run = self._checkpointed(_run_single_block, joint)
    x = jnp.concatenate([context.astype(x.dtype), x], axis=1)
    (x,) = self._run_stack(
        lambda block, x: (run(block, x, cond.temb, cond.context_temb, rope, mask),),
        list(self.single_transformer_blocks), (x,))
    return x[:, text:]

  def _run_stack(self, step, blocks: list, carry: tuple) -> tuple:
    """carry = step(block, *carry) for each block in turn: a Python loop, or with
    cfg.scan_blocks one lax.scan per stretch of blocks of the same structure (SD3's
    last block, which has no text output, stands alone)."""
    if not self.cfg.scan_blocks:
      for block in blocks:
        carry = step(block, *carry)
      return carry
    graphdefs = [nnx.graphdef(block) for block in blocks]
    start = 0
    while start < len(blocks):
      stop = start + 1
      while stop < len(blocks) and graphdefs[stop] == graphdefs[start]:
        stop += 1
      if stop - start == 1:
        carry = step(blocks[start], *carry)
      else:
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                               *[nnx.state(block) for block in blocks[start:stop]])

        def body(carry, state, graphdef=graphdefs[start]):
          return step(nnx.merge(graphdef, state), *carry), None

        carry, _ = jax.lax.scan(body, carry, stacked)
      start = stop
    return carry

  def _all_blocks(self) -> list:
    singles = list(self.single_transformer_blocks) if self.cfg.num_single_layers else []
    return list(self.transformer_blocks) + singles

  def _output(self, x: Array, temb: Array) -> Array:
    return self.proj_out(self.norm_out(x, temb)).astype(jnp.float32)

  def forward_tokens(self, tokens: Array, cond: Conditions, positions: Array,
                     mask: Array | None = None, *, history: int = 0) -> Array:
    """The block stack on video tokens [B, N, D]; patch outputs [B, N - history, p*p*C] (fp32).

    positions [B | 1, N, 3] (frame, y, x) feed the RoPE; mask (bool, [B, 1 | Lq, Lk]
    over [text; video]). The first `history` tokens are conditioning only (the
    temporal pyramid's history): no output, and with history_conditioning
    'clean' they are modulated by the clean-timestep embedding, like the text.
    """
    split = history and self.cfg.history_conditioning == 'clean'
    n = tokens.shape[1]
    bounds = ((0, history, True), (history, n, False)) if split else ((0, n, False),)
    x = self._blocks(tokens, cond, bounds, self._rope(positions, cond.context.shape[1]), mask)
    return self._output(x[:, history:], cond.temb)

  def history_kv(self, tokens: Array, cond: Conditions, positions: Array,
                 mask: Array | None) -> list[tuple[Array, Array]]:
    """Per block, the (k, v) [B, Lt + N, H, D] of [text; history tokens].

    Valid only with history_conditioning 'clean' (they do not depend on the
    target's timestep) and when no text or history token attends to later
    tokens (the block-causal mask of a target after frame 0).
    """
    if self.cfg.history_conditioning != 'clean':
      raise ValueError("history keys/values depend on the target's timestep unless "
                       "history_conditioning is 'clean'; they cannot be cached")
    rope = self._rope(positions, cond.context.shape[1])
    x, context, cache = tokens, cond.context, []
    for block in self.transformer_blocks:
      x, context, kv = block(x, context, [(0, x.shape[1], cond.context_temb)], cond.context_temb,
                             rope, mask, return_kv=True)
      cache.append(kv)
    if self.cfg.num_single_layers:
      x = jnp.concatenate([context.astype(x.dtype), x], axis=1)
      for block in self.single_transformer_blocks:
        x, kv = block(x, [(0, x.shape[1], cond.context_temb)], rope, mask, return_kv=True)
        cache.append(kv)
    return cache

  def forward_cached(self, tokens: Array, cond: Conditions, positions: Array,
                     cache: list[tuple[Array, Array]], mask: Array | None) -> Array:
    """Patch outputs of target tokens [B, N, D] attending to `history_kv`'s cache and themselves.

    mask: bool [B, 1 | N, Lcache + N] over [cached tokens; targets].
    """
    rope = self._rope(positions, None)
    x = tokens
    for block, kv in zip(self._all_blocks(), cache, strict=True):
      x = block.cached(x, cond.temb, rope, kv, mask)
    return self._output(x, cond.temb)

  def unpatchify(self, patches: Array, grid: tuple[int, int, int]) -> Array:
    """[B, T*h*w, p*p*C] -> [B, T, h*p, w*p, C] for a clip of (T, h, w) tokens."""
    t, h, w = grid
    p, c = self.cfg.patch_size, self.cfg.in_channels
    x = patches.reshape(patches.shape[0], t, h, w, p, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(patches.shape[0], t, h * p, w * p, c)

  def __call__(self, latents: Array, timesteps: Array, text: dict[str, Array], *,
               full_size: tuple[int, int] | None = None) -> Array:
    """Velocity [B, T, H, W, C] (fp32) of latents at timesteps [B] (0..1000) given text.

    text: {'seq': [B, L, joint_attention_dim], 'mask': [B, L] bool,
    'pooled': [B, pooled_projection_dim]}. full_size: see `embed_clip`; the
    official model uses the clip's own size (None) for a stage's target.
    """
    tokens, positions = self.embed_clip(latents, full_size=full_size)
    cond = self.embed_conditions(timesteps, text)
    if latents.shape[0] != cond.context.shape[0]:
      raise ValueError(f'latents batch {latents.shape[0]} != text batch {cond.context.shape[0]}')
    b, t, h, w, _ = latents.shape
    causal = self.cfg.use_temporal_causal and t > 1
    mask = joint_attention_mask(text['mask'], tokens.shape[1],
                                frames=positions[..., 0] if causal else None)
    out = self.forward_tokens(tokens, cond, positions, mask)
    p = self.cfg.patch_size
    return self.unpatchify(out, (t, h // p, w // p))


def count_params(cfg: DiTConfig) -> int:
  """Number of parameters, from shapes only (nothing is allocated)."""
  abstract = nnx.eval_shape(lambda: PyramidDiT(cfg, rngs=nnx.Rngs(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
