"""A trained VAE workdir as the DiT's latent codec: its config, EMA weights and the
latent normalisation its trainer measured. Beside the model, below training/: the
codec factory (models/latent_codec.make_codec) loads it without knowing how it
was trained."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pflow_jax import checkpoint, storage
from pflow_jax.models import vae as vae_lib
from pflow_jax.parallel import mesh as mesh_lib, rules

STATS_FILE = 'latent_stats.json'  # written by vae_loop.write_latent_stats


def load_vae(workdir: str, step: int | None = None):
  """(VAEConfig, graphdef, EMA params, step) of a train_vae workdir's latest (or given) checkpoint.

  The config's latent normalisation is the one measured by the trainer's last
  evaluation (`latent_stats.json`) when present, else the config's own.
  """
  config = checkpoint.load_workdir_config(workdir, step)
  if 'vae' not in config:
    raise ValueError(f'{workdir} is not a VAE workdir (its config.json has no vae section)')
  vae_config = vae_lib.VAEConfig(**config.vae)
  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.local_devices()[:1])
  vae_gd, abstract = nnx.split(nnx.eval_shape(
      lambda: vae_lib.CausalVAE(vae_config, dtype=jnp.dtype(config.dtype),
                                rngs=nnx.Rngs(config.seed))))
  try:
    params, step = checkpoint.restore_ema_params(
        workdir, abstract, rules.state_shardings(abstract, mesh, config.rules), step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{e}; train a VAE with `python -m pflow_jax.train_vae '
                            f'--workdir={workdir} ...`') from None
  stats_path = storage.path(workdir) / STATS_FILE
  if stats_path.exists():  # measured on held-out clips by the VAE's trainer
    stats = json.loads(stats_path.read_text())
    vae_config = dataclasses.replace(
        vae_config, first_frame_shift=stats['first_frame_shift'],
        first_frame_scale=stats['first_frame_scale'],
        video_shift=stats.get('video_shift', vae_config.video_shift),
        video_scale=stats.get('video_scale', vae_config.video_scale))
  return vae_config, vae_gd, params, step


def load_codec(latent: Mapping[str, Any]) -> vae_lib.VAECodec:
  """The `latent` config section's VAE as a LatentCodec, checked against the section."""
  workdir = latent['vae_workdir']
  if not workdir:
    raise ValueError("latent.kind 'vae' needs latent.vae_workdir")
  vae_config, graphdef, params, step = load_vae(workdir)
  found = dict(factor=vae_config.spatial_factor, temporal_factor=vae_config.temporal_factor,
               channels=vae_config.latent_channels, pixel_channels=vae_config.in_channels)
  wrong = {k: (latent[k], v) for k, v in found.items() if latent[k] != v}
  if wrong:
    details = ', '.join(f'latent.{k} is {a}, the VAE has {b}' for k, (a, b) in wrong.items())
    raise ValueError(f'the VAE in {workdir} does not match the config: {details}')
  logging.info('latent codec: VAE of %s at step %d', workdir, step)
  chunk = latent['vae_chunk_frames'] or None
  return vae_lib.VAECodec(graphdef=graphdef, state=params, config=vae_config,
                          chunk_frames=chunk,
                          chunk_latents=None if chunk is None else max(
                              1, chunk // vae_config.temporal_factor))
