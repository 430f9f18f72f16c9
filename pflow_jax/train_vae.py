r"""Trains the causal video VAE.

  python -m pflow_jax.train_vae --config=configs/vae_moving_digits.py --workdir=runs/vae_digits \
      [--config.train.num_steps=4000 --config.loss.disc_start=2000 ...]

Rerunning the same command resumes from the last complete checkpoint in
--workdir. SIGTERM/SIGINT save a checkpoint and exit. Held-out PSNR is logged
as `eval_psnr` and reconstructions are written to --workdir/samples.
"""

from absl import flags
from ml_collections import config_flags

from pflow_jax import cli, distributed
from pflow_jax.training import checkpoint, vae_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'VAE config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.initialize()
  metrics = vae_loop.train_vae(_CONFIG.value, _WORKDIR.value)
  if 'eval_psnr' in metrics:
    print(f'held-out PSNR {metrics["eval_psnr"]:.2f} dB')


if __name__ == '__main__':
  cli.run(main, user_errors=(checkpoint.CheckpointError,))
