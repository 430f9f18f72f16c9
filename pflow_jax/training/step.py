"""The jitted, sharded training step: pyramid flow loss, AdamW, EMA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pflow_jax import config as config_lib
from pflow_jax.data import pipeline
from pflow_jax.models.latent_codec import LatentCodec
from pflow_jax.parallel import rules
from pflow_jax.pyramid import flow, schedule as schedule_lib, temporal
from pflow_jax.training import state as state_lib
from pflow_jax.training.state import TrainState

Batch = dict[str, jax.Array]


def batch_latents(batch: Batch, codec: LatentCodec) -> jax.Array:
  """Latents of a batch: pre-extracted ('latents') or encoded from uint8 'video'."""
  if 'latents' in batch:
    return batch['latents'].astype(jnp.float32)
  return codec.encode(pipeline.video_to_float(batch['video']))


def make_loss_fn(config: ml_collections.ConfigDict,
                 graphdef: nnx.GraphDef) -> Callable[..., tuple[jax.Array, dict]]:
  """loss_fn(params, batch, rng, codec) -> (loss, aux): the pure objective of one step."""
  schedule = schedule_lib.from_config(config.pyramid)
  sample_ratios = tuple(config.pyramid.sample_ratios)
  plans = training_plans(config) if config.temporal.autoregressive else None

  def loss_fn(params: nnx.State, batch: Batch, rng: jax.Array, codec: LatentCodec,
              units: jax.Array | None = None):
    model = nnx.merge(graphdef, params)
    drop_rng, flow_rng = jax.random.split(rng)
    with rules.use_rules(config.rules):
      latents = rules.constrain(batch_latents(batch, codec),
                                ('batch', None, None, None, None))
      text = model.encode_text(batch, drop_rng=drop_rng,
                               drop_prob=config.pyramid.text_dropout)
      if plans is None:
        return flow.pyramid_flow_loss(model.velocity, latents, text, flow_rng, schedule,
                                      sample_ratios, config.pyramid.prediction)
      return flow.temporal_pyramid_flow_loss(
          model.unit_velocity, latents, text, flow_rng, schedule, sample_ratios, units, plans,
          config.temporal.corrupt_ratio, config.pyramid.prediction)

  return loss_fn


def history_plans(config: ml_collections.ConfigDict,
                  max_history: int) -> tuple[temporal.HistoryPlan, ...]:
  """The config's history layouts (its stages, latent grid, patch and compression) for up
  to max_history history units, one per stage."""
  _, h, w = config_lib.latent_size(config)
  return temporal.history_plans(stages=config.pyramid.stages, max_history=max_history,
                                latent_hw=(h, w), patch_size=config.model.patch_size,
                                compress=config.temporal.compress_history)


def training_plans(config: ml_collections.ConfigDict) -> tuple[temporal.HistoryPlan, ...]:
  """History layouts for autoregressive training: up to (latent frames - 1) history units."""
  return history_plans(config, config_lib.latent_size(config)[0] - 1)


def units_for_step(config: ml_collections.ConfigDict, step: int) -> np.ndarray:
  """int32 [K]: units per stage column at `step` (official sample_stage_length, SPMD order).

  With temporal.first_frame_share p > 0, a draw from (seed, step) makes the step a
  first-frame-only one ([1] * K) with probability p; the other steps keep the official order.
  """
  share = config.temporal.first_frame_share
  # The trailing 1 keeps this stream apart from stage_length_for_step's (seed, block) one.
  if share > 0 and np.random.default_rng([config.seed, step, 1]).random() < share:
    return np.ones(config.pyramid.stages, np.int32)
  units = config_lib.latent_size(config)[0]
  group = config.temporal.video_sync_group
  return np.asarray(temporal.stage_length_for_step(
      step, config.seed, max_temporal_length=units, frame_per_unit=1,
      video_sync_group=units if group == -1 else group, stages=config.pyramid.stages),
      np.int32)


def make_train_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation):
  """train_step(state, batch, codec, units) -> (state, metrics), not yet jitted.

  units: int32 [K] per-stage unit counts for autoregressive training (None otherwise).

  The step's randomness is a function of (seed, step) only, so a resumed run
  draws exactly what an uninterrupted one would.
  """
  loss_fn = make_loss_fn(config, graphdef)
  ema_decay = config.optim.ema_decay
  base_key = jax.random.key(config.seed)

  def train_step(state: TrainState, batch: Batch, codec: LatentCodec,
                 units: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(base_key, state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng,
                                                                   codec, units)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state_lib.ema_update(state.ema_params, params, ema_decay)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    for k, stage_loss in enumerate(aux['loss_per_stage']):
      metrics[f'loss_stage{k}'] = stage_loss
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      ema_params=ema), metrics

  return train_step


def batch_sharding(mesh: Mesh, config: ml_collections.ConfigDict, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over the config's batch mesh axes, rest replicated."""
  spec = rules.logical_to_spec(('batch',) + (None,) * (ndim - 1), config.rules, mesh)
  return NamedSharding(mesh, spec)


def sharded_train_step(train_step, mesh: Mesh, config: ml_collections.ConfigDict,
                       state_shardings: TrainState, batch_example: dict[str, Any],
                       codec: LatentCodec):
  """jax.jit(train_step) with explicit in/out shardings, the state donated and the codec
  (VAE weights, if any) replicated; call it, or `.lower(...)` it on abstract inputs."""
  batch_sh = {k: batch_sharding(mesh, config, v.ndim) for k, v in batch_example.items()}
  replicated = NamedSharding(mesh, P())
  codec_sh = jax.tree.map(lambda _: replicated, codec)
  return jax.jit(train_step, in_shardings=(
      state_shardings, batch_sh, codec_sh, replicated if config.temporal.autoregressive
      else None), out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def jit_train_step(train_step, mesh: Mesh, config: ml_collections.ConfigDict,
                   state_shardings: TrainState, batch_example: dict[str, Any],
                   codec: LatentCodec):
  """step(state, batch, step_index) -> (state, metrics), `sharded_train_step` with the
  step index picking the autoregressive layout (one compiled program for all)."""
  jitted = sharded_train_step(train_step, mesh, config, state_shardings, batch_example, codec)
  autoregressive = config.temporal.autoregressive

  def step(state, batch, step_index: int = 0):
    units = units_for_step(config, step_index) if autoregressive else None
    return jitted(state, batch, codec, units)

  return step
