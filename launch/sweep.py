r"""Expands a sweep file into train (and evaluate) commands; prints them, or runs them in turn.

  python launch/sweep.py --sweep=configs/sweeps/pyramid_ablation.py \
      --config=configs/moving_digits.py --workdir=runs/ablation [--run] [--evaluate]

A sweep file defines `sweep(add)`; each `add(**overrides)` call is one run,
with overrides keyed by dotted config paths, e.g. add(**{'pyramid.stages': 1}).
Each run gets its own workdir, named by the file's optional `name(overrides)`
or after all its overrides.

--evaluate adds, after each run's training, the commands that score every
checkpoint with `python -m pflow_jax.evaluate` (plus --eval_args), and the last
checkpoint again with each flag list that the sweep file's optional
`sampling(overrides)` returns; --run runs them too. A report that already exists
is not recomputed, so an interrupted study resumes where it stopped (training
resumes from its checkpoint too).
"""

import importlib.util
import os
import shlex
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pflow_jax.eval import reports  # noqa: E402  (the repository root is on the path above)
from pflow_jax import checkpoint  # noqa: E402

_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file with a sweep(add) function.')
_CONFIG = flags.DEFINE_string('config', None, 'Config file (and :variant) for every run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory of the runs\' workdirs.')
_RUN = flags.DEFINE_bool('run', False, 'Run the commands sequentially instead of printing them.')
_EVALUATE = flags.DEFINE_bool('evaluate', False, 'Score each run\'s checkpoints after training.')
_EVAL_ARGS = flags.DEFINE_string('eval_args', '--num_samples=256',
                                 'Flags added to every evaluate command.')
flags.mark_flags_as_required(['sweep', 'config', 'workdir'])


def _format(value) -> str:
  """A command-line value ml_collections parses back: tuples as '(a, b,)'."""
  if isinstance(value, (list, tuple)):
    return '(' + ''.join(f'{v!r}, ' for v in value) + ')'
  return str(value)


def _short(value) -> str:
  """A value as it appears in a workdir name: tuples as 'a,b'."""
  return ','.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _load(sweep_path: str):
  spec = importlib.util.spec_from_file_location('sweep_file', sweep_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def expand(sweep_path: str) -> list[dict]:
  module = _load(sweep_path)
  runs: list[dict] = []
  module.sweep(lambda **overrides: runs.append(overrides))
  if not runs:
    raise ValueError(f'{sweep_path}: sweep(add) added no runs')
  return runs


def run_name(sweep_path: str, overrides: dict) -> str:
  """The sweep file's `name(overrides)` if it has one, else every override spelled out."""
  name = getattr(_load(sweep_path), 'name', None)
  if name is not None:
    return name(overrides)
  return '_'.join(f'{k.split(".")[-1]}={_short(v)}' for k, v in overrides.items()) or 'base'


def commands(sweep_path: str, config: str, workdir: str) -> list[list[str]]:
  result = []
  for overrides in expand(sweep_path):
    cmd = [sys.executable, '-m', 'pflow_jax.train', f'--config={config}',
           f'--workdir={workdir}/{run_name(sweep_path, overrides)}']
    cmd += [f'--config.{k}={_format(v)}' for k, v in overrides.items()]
    result.append(cmd)
  return result


def _flag(args: list[str], name: str):
  """The value of --name=V in args (None if absent); --noname gives False, --name True."""
  for arg in args:
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg in (f'--{name}', f'--no{name}'):
      return arg == f'--{name}'
  return None


def _number(args: list[str], name: str, kind: type = float):
  """The value of --name=V in args as `kind`, None if absent."""
  value = _flag(args, name)
  return None if value is None else kind(value)


def evaluate_commands(sweep_path: str, overrides: dict, run_dir: str,
                      eval_args: list[str]) -> list[tuple[str, list[str]]]:
  """(report path, command) for each evaluation of a trained run."""
  sampling = getattr(_load(sweep_path), 'sampling', lambda overrides: [])
  steps = checkpoint.checkpoint_steps(run_dir)
  jobs = [(step, [f'--step={step}']) for step in steps]
  jobs += [(steps[-1], [f'--step={steps[-1]}', *extra]) for extra in sampling(overrides)]
  result = []
  for step, extra in jobs:
    args = eval_args + extra
    per_stage = _flag(args, 'steps_per_stage')
    name = reports.report_name(
        step, _flag(args, 'task') or 't2v', int(_flag(args, 'num_frames') or 0) or None,
        per_stage and per_stage.split(','),
        _number(args, 'guidance_scale'), _flag(args, 'renoise'), int(_flag(args, 'seed') or 0),
        _number(args, 'video_guidance_scale'),
        int(_flag(args, 'num_samples') or reports.DEFAULT_NUM_SAMPLES),
        'fvd' in (_flag(args, 'metrics') or '').split(','),
        _number(args, 'scorer_steps', int), _number(args, 'history_noise'))
    result.append((os.path.join(run_dir, 'eval', name + '.json'),
                   [sys.executable, '-m', 'pflow_jax.evaluate', f'--workdir={run_dir}', *args]))
  return result


def main(argv):
  del argv
  eval_args = shlex.split(_EVAL_ARGS.value)
  for overrides, cmd in zip(expand(_SWEEP.value),
                            commands(_SWEEP.value, _CONFIG.value, _WORKDIR.value)):
    print(shlex.join(cmd), flush=True)
    if _RUN.value:
      subprocess.run(cmd, check=True)
    if _EVALUATE.value:
      run_dir = f'{_WORKDIR.value}/{run_name(_SWEEP.value, overrides)}'
      if not checkpoint.checkpoint_steps(run_dir):
        print(f'# {run_dir} has no checkpoint yet: not evaluated (train it with --run)')
        continue
      for report, eval_cmd in evaluate_commands(_SWEEP.value, overrides, run_dir, eval_args):
        if os.path.exists(report):
          print(f'# {report} exists')
          continue
        print(shlex.join(eval_cmd), flush=True)
        if _RUN.value:
          subprocess.run(eval_cmd, check=True)


if __name__ == '__main__':
  app.run(main)
