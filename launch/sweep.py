r"""Expands a sweep file into train commands (prints them, or runs them one by one).

  python launch/sweep.py --sweep=configs/sweeps/pyramid_ablation.py \
      --config=configs/moving_digits.py --workdir=runs/ablation [--run]

A sweep file defines `sweep(add)`; each `add(**overrides)` call is one run,
with overrides keyed by dotted config paths, e.g. add(**{'pyramid.stages': 1}).
Each run gets its own workdir named after its overrides.
"""

import importlib.util
import shlex
import subprocess
import sys

from absl import app, flags

_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file with a sweep(add) function.')
_CONFIG = flags.DEFINE_string('config', None, 'Config file (and :variant) for every run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory of the runs\' workdirs.')
_RUN = flags.DEFINE_bool('run', False, 'Run the commands sequentially instead of printing them.')
flags.mark_flags_as_required(['sweep', 'config', 'workdir'])


def _format(value) -> str:
  """A command-line value ml_collections parses back: tuples as '(a, b,)'."""
  if isinstance(value, (list, tuple)):
    return '(' + ''.join(f'{v!r}, ' for v in value) + ')'
  return str(value)


def _short(value) -> str:
  """A value as it appears in a workdir name: tuples as 'a,b'."""
  return ','.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def expand(sweep_path: str) -> list[dict]:
  spec = importlib.util.spec_from_file_location('sweep_file', sweep_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  runs: list[dict] = []
  module.sweep(lambda **overrides: runs.append(overrides))
  if not runs:
    raise ValueError(f'{sweep_path}: sweep(add) added no runs')
  return runs


def commands(sweep_path: str, config: str, workdir: str) -> list[list[str]]:
  result = []
  for overrides in expand(sweep_path):
    name = '_'.join(f'{k.split(".")[-1]}={_short(v)}' for k, v in overrides.items()) or 'base'
    cmd = [sys.executable, '-m', 'pflow_jax.train', f'--config={config}',
           f'--workdir={workdir}/{name}']
    cmd += [f'--config.{k}={_format(v)}' for k, v in overrides.items()]
    result.append(cmd)
  return result


def main(argv):
  del argv
  for cmd in commands(_SWEEP.value, _CONFIG.value, _WORKDIR.value):
    print(shlex.join(cmd))
    if _RUN.value:
      subprocess.run(cmd, check=True)


if __name__ == '__main__':
  app.run(main)
