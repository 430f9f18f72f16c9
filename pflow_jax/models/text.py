"""Text conditions for the DiT: a small trainable byte-level encoder, or stored embeddings.

Either path yields {'seq': [B, L, seq_dim], 'mask': [B, L] bool, 'pooled':
[B, pooled_dim]}, the DiT's text input. The unconditional (classifier-free
guidance) condition is the encoding of the empty caption, as the official
pipeline encodes the empty prompt: for the toy encoder that is an all-padding
token row (`tokenize([''])`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pflow_jax.models import layers
from pflow_jax.parallel import rules

Array = jax.Array

PAD = 0
BYTE_VOCAB = 257  # 256 byte values shifted by one, plus padding


def tokenize(captions: Sequence[str], max_length: int) -> np.ndarray:
  """int32 [B, max_length]: UTF-8 bytes + 1, right-padded with 0."""
  tokens = np.zeros((len(captions), max_length), np.int32)
  for i, caption in enumerate(captions):
    data = caption.encode('utf-8')
    if len(data) > max_length:
      raise ValueError(f'caption {caption!r} is {len(data)} bytes, longer than '
                       f'max_length {max_length}')
    tokens[i, :len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + 1
  return tokens


class _EncoderLayer(nnx.Module):
  """Pre-LN transformer layer (bidirectional self-attention + GELU MLP)."""

  def __init__(self, width: int, num_heads: int, *, dtype: jnp.dtype, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f'width {width} is not divisible by num_heads {num_heads}')
    self.num_heads = num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm_kw = dict(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                   scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ('embed',)),
                   bias_init=nnx.with_partitioning(layers.zeros, ('embed',)))
    self.norm1 = nnx.LayerNorm(width, **norm_kw)
    self.qkv = layers.Dense(width, 3 * width, ('embed', 'heads'), **kw)
    self.out = layers.Dense(width, width, ('heads', 'embed'), **kw)
    self.norm2 = nnx.LayerNorm(width, **norm_kw)
    self.mlp = layers.FeedForward(width, 4 * width, **kw)

  def __call__(self, x: Array) -> Array:
    b, length, width = x.shape
    qkv = self.qkv(self.norm1(x), 'text_length')
    qkv = qkv.reshape(b, length, 3, self.num_heads, width // self.num_heads)
    h = layers.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + self.out(h.reshape(b, length, width), 'text_length')
    return x + self.mlp(self.norm2(x), 'text_length')


class ToyTextEncoder(nnx.Module):
  """Byte-level transformer for short synthetic captions, trained with the DiT.

  Padding positions are ordinary tokens inside the encoder (as in CLIP), so
  every caption, the empty one included, has a learned encoding; the returned
  mask marks the caption's own bytes, which the DiT's joint attention uses.
  'pooled' is a projection of the mean over all positions. With pool > 1 the
  sequence handed to the DiT is averaged over non-overlapping windows of
  `pool` bytes (a window is valid if it holds a caption byte): bytes are a
  long way to spell a few words, and the DiT's text stream costs as much per
  token as its video stream.
  """

  def __init__(self, vocab_size: int = BYTE_VOCAB, width: int = 128, num_layers: int = 2,
               num_heads: int = 4, max_length: int = 64, seq_dim: int = 128,
               pooled_dim: int = 128, pool: int = 1, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if pool < 1 or max_length % pool:
      raise ValueError(f'pool {pool} must be >= 1 and divide max_length {max_length}')
    self.vocab_size = vocab_size
    self.max_length = max_length
    self.pool = pool
    self.dtype = dtype
    init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Embed(vocab_size, width, dtype=dtype, param_dtype=param_dtype,
                                 embedding_init=nnx.with_partitioning(init, ('vocab', 'embed')),
                                 rngs=rngs)
    self.pos_embed = nnx.Param(init(rngs.params(), (max_length, width), param_dtype),
                               out_sharding=(None, 'embed'))
    self.layers = nnx.List([
        _EncoderLayer(width, num_heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(num_layers)])
    self.norm_out = nnx.LayerNorm(
        width, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ('embed',)),
        bias_init=nnx.with_partitioning(layers.zeros, ('embed',)))
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.seq_proj = layers.Dense(width, seq_dim, ('embed', 'text_embed'), **kw)
    self.pooled_proj = layers.Dense(width, pooled_dim, ('embed', 'text_embed'), **kw)

  def __call__(self, tokens: Array) -> dict[str, Array]:
    if tokens.ndim != 2 or tokens.shape[1] > self.max_length:
      raise ValueError(f'tokens must be [B, L <= {self.max_length}], got {tokens.shape}')
    length = tokens.shape[1]
    x = self.token_embed(tokens) + self.pos_embed[:length].astype(self.dtype)
    x = rules.constrain(x, ('batch', 'text_length', 'embed'))
    for layer in self.layers:
      x = layer(x)
    x = self.norm_out(x)
    pooled = jnp.mean(x.astype(jnp.float32), axis=1)
    mask = tokens != PAD
    if self.pool > 1:
      if length % self.pool:
        raise ValueError(f'token length {length} is not divisible by pool {self.pool}')
      b, d = x.shape[0], x.shape[-1]
      x = x.reshape(b, length // self.pool, self.pool, d).mean(axis=2)
      mask = mask.reshape(b, length // self.pool, self.pool).any(axis=2)
    return {'seq': self.seq_proj(x, 'text_length'),
            'mask': mask,
            'pooled': self.pooled_proj(pooled.astype(self.dtype))}


def precomputed_text(batch: Mapping[str, Array], prefix: str = 'text_') -> dict[str, Array]:
  """The text condition stored with a batch (embeddings of any encoder, e.g. T5 + CLIP).

  Reads `{prefix}seq` [B, L, D], `{prefix}mask` [B, L] and `{prefix}pooled`
  [B, P]; prefix 'null_text_' reads a stored unconditional (empty prompt) one.
  """
  keys = {name: prefix + name for name in ('seq', 'mask', 'pooled')}
  missing = [k for k in keys.values() if k not in batch]
  if missing:
    raise ValueError(f'batch lacks precomputed text keys {missing} (has {sorted(batch)})')
  seq, mask, pooled = (batch[keys[n]] for n in ('seq', 'mask', 'pooled'))
  if seq.ndim != 3 or mask.shape != seq.shape[:2] or pooled.ndim != 2 \
      or pooled.shape[0] != seq.shape[0]:
    raise ValueError(f'precomputed text shapes disagree: seq {seq.shape}, mask {mask.shape}, '
                     f'pooled {pooled.shape}')
  return {'seq': seq, 'mask': mask.astype(bool), 'pooled': pooled}
