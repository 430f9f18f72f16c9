"""Encoding a video dataset into a latent dataset (the work behind `python -m pflow_jax.encode`).

Every split is cut into parts of `part_size` clips; each process encodes its
own parts (part i on process i % process_count), batched over its local
devices, and writes each part atomically, so rerunning resumes where it
stopped and a finished dataset is left alone. The latents are normalised
posterior means: training on them equals training on the videos with the VAE
in the loop (data/latent_dataset.py).
"""

from __future__ import annotations

import os

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from pflow_jax import checkpoint, config as config_lib, storage
from pflow_jax.data import datasets, latent_dataset, pipeline
from pflow_jax.models import latent_codec, vae as vae_lib
from pflow_jax.parallel import mesh as mesh_lib


# Data fields that change how clips are read, not which clips or what they hold.
_NOT_CONTENT = ('num_threads', 'global_batch_size', 'data_dir')


def encode_dataset(config: ml_collections.ConfigDict, out: str, splits: list[str],
                   part_size: int, batch_size: int) -> dict:
  """Writes (or completes) the latent dataset in `out`; returns its encoding info."""
  if config.latent.kind != 'vae':
    raise ValueError("encode needs latent.kind 'vae' (space_to_depth latents are free to "
                     'compute in the training step)')
  if config.data.name == 'latents':
    raise ValueError('the config already reads a latent dataset; point data at videos')
  config_lib.validate(config)
  if part_size < 1 or batch_size < 1:
    raise ValueError(f'part_size and batch_size must be >= 1, got {part_size}, {batch_size}')
  if os.path.exists(os.path.join(out, latent_dataset.INFO_FILE)):
    logging.info('%s is already a finished latent dataset; nothing to do', out)
    return latent_dataset.read_info(out)
  os.makedirs(out, exist_ok=True)
  codec = latent_codec.make_codec(config.latent)

  # Each process encodes on its own devices: parts are independent work.
  devices = jax.local_devices()
  mesh = mesh_lib.make_mesh({'data': len(devices)}, devices=devices)
  batch_size = -(-batch_size // len(devices)) * len(devices)
  video_sharding = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  encode = jax.jit(lambda c, v: c.encode(pipeline.video_to_float(v)),
                   in_shardings=(jax.tree.map(lambda _: replicated, codec), video_sharding))

  t, h, w = config_lib.latent_size(config)
  latent_shape = (t, h, w, codec.latent_channels)
  vae_steps = checkpoint.checkpoint_steps(config.latent.vae_workdir)
  latent_dataset.claim(out, {
      'vae_workdir': str(storage.path(config.latent.vae_workdir)),
      'vae_step': vae_steps[-1] if vae_steps else None,  # make_codec loads the latest
      'vae_normalisation': latent_codec.normalisation(codec),
      'latent_shape': latent_shape, 'part_size': part_size,
      'data': {k: v for k, v in config.data.to_dict().items() if k not in _NOT_CONTENT},
  }, write=jax.process_index() == 0)
  feats = latent_dataset.features(latent_shape)
  lengths, moments = {}, np.zeros((2, 3))
  process, num_processes = jax.process_index(), jax.process_count()
  for split in splits:
    source = datasets.source(config, split)
    n = lengths[split] = len(source)
    total = latent_dataset.num_parts(n, part_size)
    mine = [i for i in range(total) if i % num_processes == process]
    todo = [i for i in mine if not os.path.exists(latent_dataset.part_path(out, split, i, total))]
    bar = tqdm(total=sum(min(part_size, n - i * part_size) for i in mine),
               initial=sum(min(part_size, n - i * part_size) for i in mine if i not in todo),
               desc=f'encode {split}', unit='clip', disable=process != 0, dynamic_ncols=True)
    for part in todo:
      indices = range(part * part_size, min(n, (part + 1) * part_size))
      records = []
      for start in range(indices.start, indices.stop, batch_size):
        batch = [source[i] for i in range(start, min(start + batch_size, indices.stop))]
        video = np.stack([np.asarray(r['video']) for r in batch])
        pad = batch_size - len(batch)  # one compiled shape: pad the last batch
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
        z = encode(codec, video)[:len(batch)]
        moments += np.asarray(vae_lib.latent_moments(z), np.float64)  # on device, then fetched
        latents = np.asarray(jax.device_get(z))
        records += [{'latents': z, 'caption': r['caption'], 'index': i}
                    for i, z, r in zip(range(start, start + len(batch)), latents, batch)]
        bar.update(len(batch))
      latent_dataset.write_part(latent_dataset.part_path(out, split, part, total), feats,
                                records)
    bar.close()
  if num_processes > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('pflow_jax:encode')
  info = {
      'vae_workdir': str(storage.path(config.latent.vae_workdir)),
      'vae_normalisation': latent_codec.normalisation(codec),
      'latent_shape': list(latent_shape),
      'splits': lengths,
      'data': config.data.to_dict(),
      'normalised_latent_stats (this process)': {
          name: {'mean': mean, 'std': std}
          for name, (mean, std) in vae_lib.latent_group_stats(moments).items()},
  }
  if process == 0:
    latent_dataset.finalize(out, latent_shape, lengths, part_size, info)
  return info
