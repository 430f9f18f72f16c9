r"""Trains the causal video VAE.

  python -m pflow_jax.train_vae --config=configs/vae_moving_digits.py --workdir=runs/vae_digits \
      [--config.train.num_steps=4000 --config.loss.disc_start=2000 ...]

  python -m pflow_jax.train_vae --workdir=runs/vae_digits --evaluate=512   # no training

Rerunning the same command resumes from the last complete checkpoint in
--workdir. SIGTERM/SIGINT save a checkpoint and exit. Held-out PSNR is logged
as `eval_psnr` and reconstructions are written to --workdir/samples.
`--evaluate=N` only scores the workdir's latest checkpoint on N held-out clips
(its own config.json; clips beyond the test split are not invented).
"""

from absl import flags
from ml_collections import config_flags

from pflow_jax import checkpoint, cli, distributed
from pflow_jax.training import vae_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'VAE config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
_EVALUATE = flags.DEFINE_integer(
    'evaluate', 0, 'If > 0: evaluate the latest checkpoint in --workdir on this many held-out '
    'clips and exit, without training or --config.')
flags.mark_flag_as_required('workdir')


def main(argv):
  del argv
  if _EVALUATE.value > 0:
    metrics = vae_loop.evaluate_workdir(_WORKDIR.value, _EVALUATE.value)
    print(f'step {metrics["step"]}: {vae_loop.eval_summary(metrics)}')
    return
  if _CONFIG.value is None:
    raise ValueError('--config is required to train (only --evaluate=N runs without it)')
  distributed.initialize()
  metrics = vae_loop.train_vae(_CONFIG.value, _WORKDIR.value)
  if 'eval_psnr' in metrics:
    print(f'held-out PSNR {metrics["eval_psnr"]:.2f} dB')


if __name__ == '__main__':
  cli.run(main, user_errors=(checkpoint.CheckpointError,))
