r"""Encodes a video dataset once into a latent dataset for DiT training.

  python -m pflow_jax.encode --config=configs/moving_digits.py:vae \
      --vae_workdir=runs/vae_digits --out=data/latents_digits
  python -m pflow_jax.train --config=configs/moving_digits.py:vae --workdir=runs/dit_vae \
      --config.data.name=latents --config.data.latent_dir=data/latents_digits

The config's `data` section names the videos (built on first use as for
training) and its `latent` section the VAE; --vae_workdir overrides
latent.vae_workdir. Every split is cut into parts of --part_size clips; each
process encodes its own parts (part i on process i % process_count), batched
over its local devices, and writes each part atomically, so rerunning the
command resumes where it stopped and a finished dataset is left alone. The
latents are normalised posterior means: training on them equals training on
the videos with the VAE in the loop (data/latent_dataset.py).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from pflow_jax import cli, distributed
from pflow_jax.data import latent_encoding

_CONFIG = config_flags.DEFINE_config_file('config', None, 'DiT config (data + latent).',
                                          lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Output directory of the latent dataset.')
_VAE_WORKDIR = flags.DEFINE_string('vae_workdir', None, 'train_vae workdir (default: '
                                   'the config\'s latent.vae_workdir).')
_SPLITS = flags.DEFINE_list('splits', ['train', 'test'], 'Splits to encode.')
_PART_SIZE = flags.DEFINE_integer('part_size', 256, 'Clips per output part (resume unit).')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Clips per encode call (default: '
                              'data.global_batch_size).')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  distributed.initialize()
  config = _CONFIG.value
  if _VAE_WORKDIR.value:
    with config.unlocked():
      config.latent.vae_workdir = _VAE_WORKDIR.value
  info = latent_encoding.encode_dataset(config, _OUT.value, _SPLITS.value, _PART_SIZE.value,
                        _BATCH.value or config.data.global_batch_size)
  print(f'latent dataset: {_OUT.value}  {info["splits"]}')
  for name, s in info.get('normalised_latent_stats (this process)', {}).items():
    print(f'  {name}: mean {s["mean"]:+.3f} std {s["std"]:.3f}')


if __name__ == '__main__':
  cli.run(main)
