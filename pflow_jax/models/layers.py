"""Transformer layers shared by the DiT family and the text encoder.

Numerics: parameters are `param_dtype` (fp32 masters); matmuls run in the
module's compute `dtype`; layer norms, adaLN modulation, the timestep/pooled
conditioning path, RoPE rotations and softmax statistics run in fp32.

Logical axis names (mapped to mesh axes by a rules table, parallel/rules.py):
  batch        samples
  length       tokens of the (joint text + video) sequence
  text_length  text tokens inside the text stream (short: left replicated)
  embed        model width
  mlp          MLP hidden width, and the adaLN modulation outputs
  heads        attention heads (on kernels: heads x head_dim flattened)
  kv           per-head feature width
  patch        patchified latent features (patch * patch * channels)
  text_embed   width of the incoming text features (sequence and pooled)
  vocab        token vocabulary of the toy text encoder
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pflow_jax.parallel import rules, sequence

Array = jax.Array
Initializer = nnx.initializers.Initializer

ATTENTION_IMPLS = ('xla', 'cudnn')
SEQUENCE_PARALLEL = ('none', 'ulysses')

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()


class Dense(nnx.Module):
  """y = x @ kernel + bias, with logical axes on the parameters and activations.

  kernel [in, out] carries `axes`, bias [out] carries axes[1]. The input and the
  output are constrained to ('batch', length_axis, axes[0 | 1]) (rank-2
  activations: ('batch', ...)), so every matmul is sharded explicitly in both
  passes. That also sidesteps an XLA SPMD partitioner bug (jax 0.10.2) that
  computes x [B@(data,fsdp), K@tensor] @ W [K@tensor, N@fsdp] wrongly for some
  batch rows when the partitioner picks the output sharding itself
  (tests/test_dit.py compares sharded and single-device forward and gradients).
  """

  def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None],
               *, kernel_init: Initializer = xavier_uniform, use_bias: bool = True,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.axes = tuple(axes)
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype),
                            out_sharding=self.axes)
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype),
                          out_sharding=(self.axes[1],)) if use_bias else None

  def __call__(self, x: Array, length_axis: str = 'length') -> Array:
    lead = ('batch',) if x.ndim == 2 else ('batch', length_axis) + (None,) * (x.ndim - 3)
    x = rules.constrain(x.astype(self.dtype), (*lead, self.axes[0]))
    y = jnp.matmul(x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return rules.constrain(y, (*lead, self.axes[1]))


def layer_norm(x: Array, eps: float = 1e-6) -> Array:
  """LayerNorm without affine parameters, in fp32 (returns fp32)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale (the q/k norm of the DiT)."""

  def __init__(self, dim: int, *, eps: float = 1e-5, param_dtype: jnp.dtype = jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=('kv',))

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return (xf * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def modulation(cond_dim: int, dim: int, num_chunks: int, *,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs) -> Dense:
  """The adaLN projection: cond -> num_chunks * dim, fp32, zero-initialised.

  Every adaLN projection of the official DiTs starts at zero, so a fresh block
  is the identity (gates 0) and modulated norms start as plain norms.
  """
  return Dense(cond_dim, num_chunks * dim, ('embed', 'mlp'), kernel_init=zeros,
               dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)


def modulation_chunks(linear: Dense, emb: Array, num_chunks: int) -> list[Array]:
  """SiLU(emb) -> linear, split into num_chunks per-sample [B, D] vectors (fp32)."""
  return jnp.split(linear(jax.nn.silu(emb.astype(jnp.float32))), num_chunks, axis=-1)


def modulate(x_norm: Array, shift: Array, scale: Array) -> Array:
  """x * (1 + scale) + shift with per-sample [B, D] shift/scale over tokens [B, L, D]."""
  return x_norm * (1.0 + scale[:, None, :]) + shift[:, None, :]


class AdaLayerNormZero(nnx.Module):
  """adaLN-Zero (official chunk order: shift, scale, gate for attention, then for the MLP).

  Returns the modulated norm of x (compute dtype) and (gate_msa, shift_mlp,
  scale_mlp, gate_mlp) in fp32.
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.eps = eps
    self.dtype = dtype
    self.linear = modulation(dim, dim, 6, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, emb: Array) -> tuple[Array, tuple[Array, Array, Array, Array]]:
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation_chunks(
        self.linear, emb, 6)
    x = modulate(layer_norm(x, self.eps), shift_msa, scale_msa).astype(self.dtype)
    return x, (gate_msa, shift_mlp, scale_mlp, gate_mlp)


class AdaLayerNormZeroSingle(nnx.Module):
  """adaLN-Zero of FLUX's single-stream blocks: (shift, scale, gate) for one residual.

  Returns the modulated norm of x (compute dtype) and the gate (fp32).
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.eps = eps
    self.dtype = dtype
    self.linear = modulation(dim, dim, 3, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, emb: Array) -> tuple[Array, Array]:
    shift, scale, gate = modulation_chunks(self.linear, emb, 3)
    return modulate(layer_norm(x, self.eps), shift, scale).astype(self.dtype), gate


class AdaLayerNormContinuous(nnx.Module):
  """Modulated LayerNorm with (scale, shift) from the conditioning (official order)."""

  def __init__(self, dim: int, cond_dim: int, *, eps: float = 1e-6,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.eps = eps
    self.dtype = dtype
    self.linear = modulation(cond_dim, dim, 2, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, emb: Array) -> Array:
    scale, shift = modulation_chunks(self.linear, emb, 2)
    return modulate(layer_norm(x, self.eps), shift, scale).astype(self.dtype)


def gated_residual(x: Array, gate: Array, update: Array) -> Array:
  """x + gate * update in fp32, stored back in x's dtype."""
  out = x.astype(jnp.float32) + gate[:, None, :] * update.astype(jnp.float32)
  return out.astype(x.dtype)


class FeedForward(nnx.Module):
  """Linear -> GELU (tanh approximation) -> Linear (official FeedForward 'gelu-approximate')."""

  def __init__(self, dim: int, hidden: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj_in = Dense(dim, hidden, ('embed', 'mlp'), **kw)
    self.proj_out = Dense(hidden, dim, ('mlp', 'embed'), **kw)

  def __call__(self, x: Array, length_axis: str = 'length') -> Array:
    return self.proj_out(jax.nn.gelu(self.proj_in(x, length_axis), approximate=True), length_axis)


class MLPEmbedder(nnx.Module):
  """linear_1 -> SiLU -> linear_2 in fp32 (the timestep and pooled-text embedders)."""

  def __init__(self, in_features: int, dim: int, *, in_axis: str | None,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    kw = dict(kernel_init=nnx.initializers.normal(0.02), dtype=jnp.float32,
              param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = Dense(in_features, dim, (in_axis, 'mlp'), **kw)
    self.linear_2 = Dense(dim, dim, ('mlp', 'embed'), **kw)

  def __call__(self, x: Array) -> Array:
    return self.linear_2(jax.nn.silu(self.linear_1(x.astype(jnp.float32))))


def timestep_embedding(timesteps: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding [B, dim] of timesteps [B] (0..1000 scale), cos half first.

  The diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`
  of SD3 and FLUX: frequencies exp(-log(max_period) * i / (dim / 2)).
  """
  if timesteps.ndim != 1:
    raise ValueError(f'timesteps must be [batch], got shape {timesteps.shape}')
  half = dim // 2
  # The frequencies are constants, computed as the official code computes them (the exponent
  # in fp32), then exponentiated exactly: with timesteps near 1000 one ulp of a frequency
  # moves sin/cos by ~1e-4, so XLA's own fp32 exp would not reproduce the official model.
  exponent = np.float32(-np.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
  freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rope_angles(positions: Array, axes_dim: Sequence[int], theta: float = 10000.0) -> Array:
  """Rotation angles [..., L, sum(axes_dim) // 2] for positions [..., L, len(axes_dim)].

  Axis i rotates its own `axes_dim[i]` features with frequencies
  theta^(-2j / axes_dim[i]) (FLUX's EmbedND; one axis is plain RoPE).
  """
  if positions.shape[-1] != len(axes_dim):
    raise ValueError(f'positions have {positions.shape[-1]} axes, rope axes_dim {tuple(axes_dim)}')
  parts = []
  for i, d in enumerate(axes_dim):
    if d % 2:
      raise ValueError(f'rope axes_dim entries must be even, got {tuple(axes_dim)}')
    omega = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    parts.append(positions[..., i:i + 1].astype(jnp.float32) * jnp.asarray(omega, jnp.float32))
  return jnp.concatenate(parts, axis=-1)


def apply_rope(x: Array, angles: Array) -> Array:
  """Rotates the feature pairs (x[2j], x[2j+1]) of x [B, L, H, D] by angles [B|1, L, D/2]."""
  if angles.shape[-1] * 2 != x.shape[-1]:
    raise ValueError(f'rope angles cover {2 * angles.shape[-1]} features, heads have {x.shape[-1]}')
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x0, x1 = xf[..., 0], xf[..., 1]
  out = jnp.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def attention(q: Array, k: Array, v: Array, *, mask: Array | None = None,
              impl: str = 'xla', sequence_parallel: str = 'none') -> Array:
  """Multi-head attention, the one entry point over implementations.

  q [B, Lq, H, D], k/v [B, Lk, H, D]; mask: bool, broadcastable to [B, Lq, Lk],
  True where a query may attend to a key. Logits and softmax statistics are
  fp32 for every input dtype. impl: 'xla' (any backend) or 'cudnn' (GPU flash
  attention through jax.nn.dot_product_attention). sequence_parallel: 'none'
  (XLA gathers tokens sharded over the sequence axis) or 'ulysses'
  (parallel/sequence.py: heads are exchanged for tokens, so no device holds
  every head of every token).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'unknown attention impl {impl!r}; known: {ATTENTION_IMPLS}')
  if sequence_parallel not in SEQUENCE_PARALLEL:
    raise ValueError(f'unknown sequence_parallel {sequence_parallel!r}; known: '
                     f'{SEQUENCE_PARALLEL}')
  same_heads = (q.shape[0], *q.shape[2:]) == (k.shape[0], *k.shape[2:])
  if q.ndim != 4 or k.shape != v.shape or not same_heads:
    raise ValueError(f'attention wants q [B,Lq,H,D], k/v [B,Lk,H,D]; got {q.shape}, '
                     f'{k.shape}, {v.shape}')
  if mask is not None:
    if mask.ndim != 3 or mask.dtype != jnp.bool_:
      raise ValueError(f'attention mask must be bool [B|1, Lq|1, Lk], got {mask.dtype} '
                       f'{mask.shape}')

  def attend(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
    heads_mask = None if mask is None else mask[:, None]  # broadcast over heads
    return jax.nn.dot_product_attention(q, k, v, mask=heads_mask, implementation=impl)

  if sequence_parallel == 'ulysses':
    return sequence.ulysses_attention(attend, q, k, v, mask)
  return attend(q, k, v, mask)
