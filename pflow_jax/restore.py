"""A trained workdir for sampling and evaluation: its saved config and its EMA weights."""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import Mesh

from pflow_jax import checkpoint, config as config_lib
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import state as state_lib


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The validated config saved with a workdir's checkpoint `step` (default: the latest)."""
  config = checkpoint.load_workdir_config(workdir, step)
  if 'prediction' not in config.pyramid:
    # Saved before these options existed: the official velocity and renoising jump.
    config.pyramid.prediction = 'velocity'
  if 'renoise' not in config.sample:
    config.sample.renoise = True
  if 'history_noise' not in config.sample:  # and the official clean history
    config.sample.history_noise = 0.0
  if 'first_frame_share' not in config.temporal:  # trained on the official layouts only
    config.temporal.first_frame_share = 0.0
  config_lib.validate(config)
  return config


def load_params(config: ml_collections.ConfigDict, workdir: str, step: int | None,
                mesh: Mesh | None = None):
  """(graphdef, EMA parameters, step), sharded over `mesh` by the config's rules (default:
  this process's first device)."""
  if mesh is None:
    mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.local_devices()[:1])
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  params, step = checkpoint.restore_ema_params(workdir, abstract.ema_params,
                                               shardings.ema_params, step)
  return graphdef, params, step
