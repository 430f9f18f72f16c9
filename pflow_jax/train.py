r"""Trains a pyramidal-flow DiT.

  python -m pflow_jax.train --config=configs/moving_digits.py --workdir=runs/digits \
      [--config.train.num_steps=2000 --config.pyramid.stages=1 ...]

Rerunning the same command resumes from the last complete checkpoint in
--workdir. SIGTERM/SIGINT save a checkpoint and exit.
"""

from absl import flags
from ml_collections import config_flags

from pflow_jax import checkpoint, cli, distributed, inference
from pflow_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.initialize()
  loop.train(_CONFIG.value, _WORKDIR.value, make_sampler=inference.training_sampler)


if __name__ == '__main__':
  cli.run(main, user_errors=(checkpoint.CheckpointError,))
