r"""Converts the released Pyramid Flow weights into workdirs that sample and fine-tune.

  python -m pflow_jax.convert --config=configs/pyramid_flow_flux.py:768p \
      --dit=/models/pyramid-flow-miniflux/diffusion_transformer_768p --workdir=runs/miniflux_768p
  python -m pflow_jax.convert --config=configs/vae_pyramid_flow.py:miniflux \
      --vae=/models/pyramid-flow-miniflux/causal_video_vae --workdir=checkpoints/causal_video_vae

--dit / --vae is an official model folder: `*.safetensors` (one file or shards;
never pickle) and optionally the diffusers `config.json`, whose class must be the
config's DiT family. Every official key is mapped (models/official.py) and every
parameter of ours filled, with all shapes checked, before anything is read in
full; a mismatch is one error naming the keys, and nothing is written. Tensors
are read one at a time, so host memory peaks near the converted weights' size.

The workdir gets config.json and checkpoint 0 holding the EMA weights (what
`sample`, `evaluate` and a DiT config's latent.vae_workdir read). Fine-tune in a
new workdir with --config.train.init_from=<this workdir>. An existing workdir is
never written into.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable

from absl import flags
import ml_collections
import numpy as np
from flax import nnx
from ml_collections import config_flags
from safetensors import safe_open

from pflow_jax import checkpoint, cli, config as config_lib, storage
from pflow_jax.models import dit as dit_lib, official
from pflow_jax.training import state as state_lib, vae_step

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The model\'s config (DiT or VAE).',
                                          lock_config=True)
_DIT = flags.DEFINE_string('dit', None, 'Official DiT folder (*.safetensors, config.json).')
_VAE = flags.DEFINE_string('vae', None, 'Official causal VAE folder (*.safetensors).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'New workdir to write.')
flags.mark_flags_as_required(['config', 'workdir'])

# The diffusers class names of the official DiT families.
OFFICIAL_CLASSES = {'PyramidDiffusionMMDiT': 'sd3', 'PyramidFluxTransformer': 'flux'}


def read_safetensors(folder: str) -> tuple[dict[str, Callable[[], np.ndarray]],
                                           dict[str, tuple[int, ...]]]:
  """(key -> loader of its array, key -> shape) over every *.safetensors in folder."""
  files = sorted(glob.glob(os.path.join(folder, '*.safetensors')))
  if not files:
    raise FileNotFoundError(f'no *.safetensors in {folder}')
  loaders, shapes = {}, {}
  for path in files:
    with safe_open(path, framework='numpy') as f:
      for key in f.keys():
        if key in shapes:
          raise ValueError(f'{key} is in two files of {folder}')
        shapes[key] = tuple(f.get_slice(key).get_shape())

        def load(path=path, key=key):
          with safe_open(path, framework='numpy') as g:
            return g.get_tensor(key)

        loaders[key] = load
  return loaders, shapes


def check_official_class(folder: str, family: str) -> None:
  """The folder's config.json (if any) must name the class of `family`."""
  path = os.path.join(folder, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    name = json.load(f).get('_class_name')
  if name in OFFICIAL_CLASSES and OFFICIAL_CLASSES[name] != family:
    raise ValueError(f'{folder} holds a {name} (model.family={OFFICIAL_CLASSES[name]!r}); the '
                     f'config has model.family={family!r}')


def dit_ema_params(config: ml_collections.ConfigDict, folder: str) -> nnx.State:
  """The DiT config's parameter tree (FlowModel) filled with the official weights."""
  if config.text.encoder != 'precomputed':
    raise ValueError("the released DiTs read T5/CLIP embeddings: the config needs "
                     f"text.encoder='precomputed', not {config.text.encoder!r}")
  cfg = dit_lib.DiTConfig(**config.model)
  check_official_class(folder, cfg.family)
  loaders, shapes = read_safetensors(folder)
  params = official.load_dit_params(cfg, loaders, shapes)
  return official.filled(state_lib.abstract_model(config)[1], params, skip=1)


def vae_ema_params(config: ml_collections.ConfigDict, folder: str) -> nnx.State:
  """The VAE config's parameter tree filled with the official weights."""
  loaders, shapes = read_safetensors(folder)
  params = official.load_vae_params(vae_step.vae_config(config), loaders, shapes)
  return official.filled(vae_step.abstract_models(config)[2], params)


def write_workdir(workdir: str, config: ml_collections.ConfigDict, ema_params: nnx.State) -> None:
  """config.json and checkpoint 0 with the EMA weights; refuses an existing workdir."""
  if (storage.path(workdir) / 'config.json').exists() or checkpoint.checkpoint_steps(workdir):
    raise FileExistsError(f'{workdir} already holds a run; convert into a new --workdir')
  storage.path(workdir).mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(workdir, async_save=False, compress=False)
  try:
    ckpt.save(0, {'step': np.int32(0), 'ema_params': ema_params}, {}, checkpoint.config_json(config))
  finally:
    ckpt.close()
  checkpoint.write_config_json(workdir, checkpoint.config_json(config))


def main(argv):
  del argv
  config = _CONFIG.value
  if (_DIT.value is None) == (_VAE.value is None):
    raise ValueError('give one of --dit and --vae')
  if _DIT.value is not None:
    if 'model' not in config:
      raise ValueError('--dit needs a DiT config (e.g. configs/pyramid_flow_flux.py:768p)')
    config_lib.validate(config)
    params = dit_ema_params(config, _DIT.value)
  else:
    if 'vae' not in config:
      raise ValueError('--vae needs a VAE config (e.g. configs/vae_pyramid_flow.py:miniflux)')
    params = vae_ema_params(config, _VAE.value)
  write_workdir(_WORKDIR.value, config, params)
  count = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(params))
  print(f'wrote {_WORKDIR.value}: {count:,} parameters at step 0')


if __name__ == '__main__':
  cli.run(main, user_errors=(official.ConversionError, checkpoint.CheckpointError))
