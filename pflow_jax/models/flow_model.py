"""The trainable model: the DiT plus, for toy data, a jointly trained text encoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from pflow_jax.models import dit as dit_lib
from pflow_jax.models import text as text_lib


class FlowModel(nnx.Module):
  """Wraps the DiT and the text path so the trainer and sampler see one module."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(config.dtype)
    self.dit = dit_lib.PyramidDiT(dit_lib.DiTConfig(**config.model), dtype=dtype,
                                  param_dtype=jnp.float32, rngs=rngs)
    self.text_encoder = nnx.data(None)
    if config.text.encoder == 'toy':
      self.text_encoder = text_lib.ToyTextEncoder(
          width=config.text.width, num_layers=config.text.num_layers,
          num_heads=config.text.num_heads, max_length=config.text.max_length,
          seq_dim=config.model.joint_attention_dim,
          pooled_dim=config.model.pooled_projection_dim,
          dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

  def encode_text(self, batch: dict[str, jax.Array], *, drop_rng: jax.Array | None = None,
                  drop_prob: float = 0.0) -> dict[str, jax.Array]:
    """Text condition of a batch; with drop_rng, each caption becomes the empty one
    with probability drop_prob (classifier-free guidance training)."""
    if self.text_encoder is not None:
      tokens = batch['tokens']
      if drop_rng is not None and drop_prob > 0:
        keep = jax.random.uniform(drop_rng, (tokens.shape[0], 1)) >= drop_prob
        tokens = jnp.where(keep, tokens, 0)  # all padding == the empty caption
      return self.text_encoder(tokens)
    text = text_lib.precomputed_text(batch)
    if drop_rng is not None and drop_prob > 0:
      null = text_lib.precomputed_text(batch, prefix='null_text_')
      keep = jax.random.uniform(drop_rng, (text['pooled'].shape[0],)) >= drop_prob
      text = jax.tree.map(
          lambda t, n: jnp.where(keep.reshape((-1,) + (1,) * (t.ndim - 1)), t, n), text, null)
    return text

  def velocity(self, latents: jax.Array, timesteps: jax.Array, text: dict[str, jax.Array],
               *, full_size: tuple[int, int]) -> jax.Array:
    return self.dit(latents, timesteps, text, full_size=full_size)
