"""The trainable model: the DiT plus, for toy data, a jointly trained text encoder."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from pflow_jax.models import dit as dit_lib
from pflow_jax.models import text as text_lib
from pflow_jax.pyramid import temporal


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
          pool=config.text.pool,
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

  def unconditional_text(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The text condition classifier-free guidance contrasts with: the empty caption (toy
    encoder) or the stored embeddings of the empty prompt (`null_text_*`, precomputed)."""
    if self.text_encoder is not None:
      return self.text_encoder(jnp.zeros_like(batch['tokens']))
    return text_lib.precomputed_text(batch, prefix='null_text_')

  def velocity(self, latents: jax.Array, timesteps: jax.Array,
               text: dict[str, jax.Array]) -> jax.Array:
    """The DiT's velocity for one pyramid stage; as official, a stage's latents take
    spatial positions from a crop at their own size (no interpolation)."""
    return self.dit(latents, timesteps, text)

  def _unit_inputs(self, target: jax.Array, history: list[jax.Array], num_history: jax.Array,
                   plan: temporal.HistoryPlan, timesteps: jax.Array, text: dict[str, jax.Array]):
    """(tokens [history slots; target], positions, conditions, mask) of one unit's sequence."""
    dit = self.dit
    target_tokens, target_pos = dit.embed_clip(target)
    target_pos = target_pos.at[..., 0].add(num_history.astype(jnp.float32))
    batch = target.shape[0]
    if plan.length:
      bank = jnp.concatenate([dit.embed_clip(level, full_size=target.shape[2:4])[0]
                              for level in history], axis=1)
      tokens = jnp.take(bank, jnp.asarray(plan.index)[num_history], axis=1)
      positions = jnp.asarray(plan.positions)[num_history][None]
      valid = jnp.asarray(plan.valid)[num_history]
    else:
      tokens = jnp.zeros((batch, 0, target_tokens.shape[-1]), target_tokens.dtype)
      positions = jnp.zeros((1, 0, 3), jnp.float32)
      valid = jnp.zeros((0,), bool)
    tokens = jnp.concatenate([tokens, target_tokens], axis=1)
    positions = jnp.concatenate([positions, target_pos], axis=1)
    cond = dit.embed_conditions(timesteps, text)
    text_seg = jnp.where(text['mask'], 1, -1)
    video_seg = jnp.concatenate([valid.astype(jnp.int32),
                                 jnp.ones((target_tokens.shape[1],), jnp.int32)])
    segment = jnp.concatenate([text_seg, jnp.broadcast_to(video_seg, (batch,) + video_seg.shape)],
                              axis=1)
    order = jnp.concatenate([jnp.zeros_like(text_seg), jnp.broadcast_to(
        positions[0, :, 0].astype(jnp.int32), (batch, positions.shape[1]))], axis=1)
    mask = temporal.attention_mask(segment, order,
                                   temporal_causal=self.dit.cfg.use_temporal_causal)
    return tokens, positions, cond, mask

  def unit_velocity(self, target: jax.Array, history: list[jax.Array], num_history: jax.Array,
                    plan: temporal.HistoryPlan, timesteps: jax.Array,
                    text: dict[str, jax.Array]) -> jax.Array:
    """Velocity of one target unit [B, 1, h, w, C] given its history (see flow.UnitVelocityFn).

    history: the bank levels of `plan` ([B, W, h_l, w_l, C] each, frames 0..W-1);
    the first num_history frames are the history (traced int), the rest unused.
    """
    tokens, positions, cond, mask = self._unit_inputs(target, history, num_history, plan,
                                                      timesteps, text)
    out = self.dit.forward_tokens(tokens, cond, positions, mask, history=plan.length)
    p = self.dit.cfg.patch_size
    return self.dit.unpatchify(out, (1, target.shape[2] // p, target.shape[3] // p))

  def unit_history_cache(self, target_shape: tuple[int, ...], history: list[jax.Array],
                         num_history: jax.Array, plan: temporal.HistoryPlan,
                         text: dict[str, jax.Array]) -> dict[str, Any]:
    """What `unit_velocity_cached` reuses across the Euler steps of one unit and stage.

    The history's keys/values depend on nothing that changes between steps
    when history_conditioning is 'clean' (dit.history_kv); the timestep given
    here is irrelevant to them.
    """
    target = jnp.zeros(target_shape, jnp.float32)
    timesteps = jnp.zeros((target_shape[0],), jnp.float32)
    tokens, positions, cond, mask = self._unit_inputs(target, history, num_history, plan,
                                                      timesteps, text)
    n_target = tokens.shape[1] - plan.length
    n_cached = mask.shape[-1] - n_target
    kv = self.dit.history_kv(tokens[:, :plan.length], cond, positions[:, :plan.length],
                             mask[:, :n_cached, :n_cached])
    return {'kv': kv, 'mask': mask[:, n_cached:], 'positions': positions[:, plan.length:]}

  def unit_velocity_cached(self, target: jax.Array, cache: dict[str, Any],
                           timesteps: jax.Array, text: dict[str, jax.Array]) -> jax.Array:
    """`unit_velocity` computed against a `unit_history_cache` (same value, less work)."""
    dit = self.dit
    tokens, _ = dit.embed_clip(target)
    cond = dit.embed_conditions(timesteps, text)
    out = dit.forward_cached(tokens, cond, cache['positions'], cache['kv'], cache['mask'])
    p = dit.cfg.patch_size
    return dit.unpatchify(out, (1, target.shape[2] // p, target.shape[3] // p))
