"""The reproduction study's tooling: sweep --evaluate finds each report, study.py aggregates."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPRO = os.path.join(ROOT, 'configs/sweeps/reproduction.py')

from pflow_jax.eval import study  # noqa: E402


def _sweep_module():
  sys.path.insert(0, os.path.join(ROOT, 'launch'))
  import sweep  # a launcher (absl flags): imported only where used, as in test_cli
  return sweep


def _fake_run(run_dir, stages, seed, steps, reports, temporal=None, num_samples=256, fvd=None):
  """A trained run as the trainer and evaluate leave it; reports: (step, steps_per_stage,
  renoise, prompt acc., motion acc., Frechet); fvd: a function of the Frechet distance giving
  each report's FVD (evaluate --metrics=digits,fvd), None for reports without."""
  for step in steps:
    os.makedirs(os.path.join(run_dir, 'checkpoints', str(step)))
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    json.dump({'seed': seed, 'pyramid': {'stages': stages},
               'temporal': temporal or {'autoregressive': False}}, f)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    for step in range(10, steps[-1] + 1, 10):  # 10 steps at 2 steps/s: 5 s a window
      f.write(json.dumps({'step': step, 'loss': 1.0, 'steps_per_sec': 2.0}) + '\n')
  os.makedirs(os.path.join(run_dir, 'eval'))
  for step, per_stage, renoise, prompt, motion, frechet in reports:
    report = {'step': step, 'task': 't2v', 'num_samples': num_samples,
              'sample': {'steps_per_stage': per_stage, 'guidance_scale': 4.0,
                         'renoise': renoise},
              'compute': {'train_flops': 1e9 * step * (2 if stages == 1 else 1),
                          'sample_flops_per_clip': 1e6 * sum(per_stage) / stages ** 2},
              'rows': {'generated': {'prompt_accuracy': prompt, 'motion_accuracy': motion,
                                     'temporal_consistency': 1.0,
                                     'frechet_distance': frechet},
                       'real_test_clips': {'frechet_distance': 7.0}}}
    name = f"{step}_{'-'.join(map(str, per_stage))}_{renoise}_n{num_samples}"
    if fvd is not None:
      report['rows']['generated']['fvd'] = fvd(frechet)
      report['rows']['real_test_clips']['fvd'] = 12.0
      name += '_fvd'
    with open(os.path.join(run_dir, 'eval', name + '.json'), 'w') as f:
      json.dump(report, f)


def test_sweep_evaluate_commands_name_the_reports_evaluate_writes(tmp_path):
  """Each checkpoint gets one default evaluation and the last one each of the sweep file's
  sampling settings, under the report names pflow_jax.evaluate gives them."""
  run_dir = str(tmp_path / 'stages=3_seed=0')
  for step in (1200, 2400):
    os.makedirs(os.path.join(run_dir, 'checkpoints', str(step)))
  overrides = {'pyramid.stages': 3, 'seed': 0}
  sweep = _sweep_module()
  jobs = sweep.evaluate_commands(REPRO, overrides, run_dir, ['--num_samples=256'])
  names = [os.path.relpath(report, run_dir) for report, _ in jobs]
  assert names == ['eval/1200.json', 'eval/2400.json', 'eval/2400_steps5-5-5.json',
                   'eval/2400_steps10-10-10.json', 'eval/2400_norenoise.json']
  commands = [cmd for _, cmd in jobs]
  assert commands[0][1:] == ['-m', 'pflow_jax.evaluate', f'--workdir={run_dir}',
                             '--num_samples=256', '--step=1200']
  assert commands[2][-1] == '--steps_per_stage=5,5,5' and commands[4][-1] == '--norenoise'
  assert sweep.run_name(REPRO, overrides) == 'stages=3_seed=0'
  jobs = sweep.evaluate_commands(REPRO, overrides, run_dir, [
      '--num_samples=400', '--metrics=digits,fvd', '--guidance_scale=6',
      '--video_guidance_scale=2', '--scorer_steps=50'])
  assert os.path.relpath(jobs[0][0], run_dir) == 'eval/1200_cfg6_videocfg2_n400_fvd_scorer50.json'


def test_sweep_dry_run_prints_training_and_evaluation(tmp_path):
  """Without --run nothing is trained; runs with checkpoints get their evaluate commands
  (skipping reports that exist), runs without are named as not evaluated."""
  run_dir = tmp_path / 'stages=1_seed=0'
  os.makedirs(run_dir / 'checkpoints' / '1178')
  os.makedirs(run_dir / 'eval')
  (run_dir / 'eval' / '1178.json').write_text('{}')
  out = subprocess.run(
      [sys.executable, 'launch/sweep.py', f'--sweep={REPRO}', '--config=configs/moving_digits.py',
       f'--workdir={tmp_path}', '--evaluate'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert sum('-m pflow_jax.train' in line for line in lines) == 9
  assert any('--config.train.num_steps=1178' in line for line in lines)
  assert f'# {run_dir}/eval/1178.json exists' in lines
  evaluations = [line for line in lines if '-m pflow_jax.evaluate' in line]
  assert len(evaluations) == 2 and all('--step=1178' in line for line in evaluations)
  assert {line.split()[-1] for line in evaluations} == {'--steps_per_stage=15',
                                                        '--steps_per_stage=30'}
  assert f'# {tmp_path}/stages=3_seed=0 has no checkpoint yet' in out.stdout
  assert sorted(os.listdir(run_dir / 'eval')) == ['1178.json']  # nothing was run


def _study_workdir(tmp_path):
  values = {0: (0.1, 0.5, 100.0), 1: (0.3, 0.7, 80.0), 2: (0.2, 0.9, 90.0)}
  for seed, (prompt, motion, frechet) in values.items():
    _fake_run(tmp_path / f'stages=1_seed={seed}', 1, seed, (50, 100), [
        (50, [60], True, prompt / 2, motion / 2, frechet * 2),
        (100, [60], True, prompt, motion, frechet),
        (100, [30], True, prompt, motion, frechet + 10)])
    _fake_run(tmp_path / f'stages=3_seed={seed}', 3, seed, (100, 200), [
        (100, [20, 20, 20], True, prompt, motion, frechet - 5),
        (200, [20, 20, 20], True, prompt, motion, frechet - 20),
        (200, [20, 20, 20], False, 0.0, 0.0, 500.0)])
  return values


def test_study_aggregates_seeds_and_checks_the_claim(tmp_path):
  values = _study_workdir(tmp_path)
  rows = study.summarise(study.load_reports(str(tmp_path)))
  assert len(rows) == 6
  k1 = next(r for r in rows if r['stages'] == 1 and r['step'] == 100
            and r['steps_per_stage'] == [60])
  frechets = [values[s][2] for s in (0, 1, 2)]
  assert k1['seeds'] == [0, 1, 2] and k1['frechet_distance']['values'] == frechets
  assert k1['frechet_distance']['mean'] == pytest.approx(np.mean(frechets))
  assert k1['frechet_distance']['std'] == pytest.approx(np.std(frechets, ddof=1))
  assert k1['train_seconds']['mean'] == pytest.approx(50.0)  # 100 steps at 2 steps/s
  # A checkpoint inside a logging window counts its share of that window.
  assert study.training_seconds(str(tmp_path / 'stages=1_seed=0'), 95) == pytest.approx(47.5)
  with pytest.raises(ValueError, match='ends before step 101'):
    study.training_seconds(str(tmp_path / 'stages=1_seed=0'), 101)
  norenoise = [r for r in rows if not r['renoise']]
  assert len(norenoise) == 1 and norenoise[0]['frechet_distance']['mean'] == 500.0

  checks = {c['compute']: c for c in study.claim(rows)}
  # K = 1's 100 steps cost 2e11 FLOPs; K = 3's 100-step checkpoint is the one at <= 0.5x.
  assert checks['training']['pyramid']['step'] == 100
  assert checks['training']['ratio'] == pytest.approx(0.5)
  assert checks['training']['frechet_distance']['pyramid']['mean'] == pytest.approx(
      np.mean(frechets) - 5)
  # Sampling: K = 3's 60 steps cost 1/9 of K = 1's 60; the renoise-off row is not the pyramid.
  assert checks['sampling']['ratio'] == pytest.approx(1 / 9)
  assert checks['sampling']['frechet_distance']['pyramid']['mean'] == pytest.approx(
      np.mean(frechets) - 20)
  assert checks['sampling']['baseline']['steps_per_stage'] == [60]


def test_study_cli_writes_table_json_and_plots(tmp_path):
  _study_workdir(tmp_path / 'sweep')
  out = tmp_path / 'docs' / 'study'
  result = subprocess.run([sys.executable, 'launch/study.py', f'--workdir={tmp_path}/sweep',
                           f'--out={out}'], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  table = (tmp_path / 'docs' / 'study.md').read_text()
  assert '| 1 | - | 100 | 60 | on | 3 | 256 |' in table
  assert '| training <= 0.5x | 256 | 0.500 |' in table
  assert json.loads((tmp_path / 'docs' / 'study.json').read_text())['claim']
  for suffix in ('_training.png', '_sampling.png'):
    assert (tmp_path / 'docs' / f'study{suffix}').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_study_separates_compressed_and_full_history(tmp_path):
  """The temporal-pyramid ablation (configs/sweeps/ar_history.py): autoregressive runs are
  grouped by how they keep their history; a run that is not autoregressive has none."""
  for seed in (0, 1):
    for compress, frechet in ((True, 100.0 + seed), (False, 200.0 + seed)):
      history = 'compressed' if compress else 'full'
      _fake_run(tmp_path / f'history={history}_seed={seed}', 3, seed, (100,),
                [(100, [20, 20, 20], True, 0.1, 0.2, frechet)],
                {'autoregressive': True, 'compress_history': compress})
  _fake_run(tmp_path / 'joint', 3, 0, (100,), [(100, [20, 20, 20], True, 0.1, 0.2, 50.0)])
  rows = study.summarise(study.load_reports(str(tmp_path)))
  by_history = {r['history']: r for r in rows}
  assert sorted(by_history) == ['-', 'compressed', 'full']
  assert by_history['compressed']['frechet_distance']['values'] == [100.0, 101.0]
  assert by_history['full']['frechet_distance']['values'] == [200.0, 201.0]
  assert by_history['-']['seeds'] == [0]
  assert '| 3 | full | 100 | 20+20+20 | on | 2 |' in study.markdown(rows)


def test_study_refuses_an_empty_sweep_and_two_reports_for_one_seed(tmp_path):
  with pytest.raises(FileNotFoundError, match='no evaluation reports'):
    study.load_reports(str(tmp_path))
  _fake_run(tmp_path / 'a', 1, 0, (100,), [(100, [60], True, 0.1, 0.1, 10.0)])
  _fake_run(tmp_path / 'b', 1, 0, (100,), [(100, [60], True, 0.2, 0.2, 20.0)])
  with pytest.raises(ValueError, match='two reports for one seed'):
    study.summarise(study.load_reports(str(tmp_path)))


def test_study_keeps_clip_counts_and_fvd_apart(tmp_path):
  """A sweep scored twice, at 256 clips and at 400 clips with FVD (evaluate writes both
  reports side by side): each protocol gets its own rows and claim check, never averaged."""
  values = _study_workdir(tmp_path)
  for seed, (prompt, motion, frechet) in values.items():
    for stages, per_stage, step in ((1, [60], 100), (3, [20, 20, 20], 200)):
      _fake_run(tmp_path / f'stages={stages}_seed={seed}_n400', stages, seed, (step,),
                [(step, per_stage, True, prompt + 0.05, motion, frechet + 1)],
                num_samples=400, fvd=lambda f, stages=stages: 10 * f + stages)
  rows = study.summarise(study.load_reports(str(tmp_path)))
  assert len(rows) == 8
  k1 = [r for r in rows if r['stages'] == 1 and r['step'] == 100
        and r['steps_per_stage'] == [60]]
  assert sorted(r['num_samples'] for r in k1) == [256, 400]
  k1_256, k1_400 = sorted(k1, key=lambda r: r['num_samples'])
  assert k1_256['fvd'] is None and k1_256['seeds'] == k1_400['seeds'] == [0, 1, 2]
  frechets = [values[s][2] for s in (0, 1, 2)]
  assert k1_256['frechet_distance']['values'] == frechets
  assert k1_400['frechet_distance']['values'] == [f + 1 for f in frechets]
  assert k1_400['fvd']['values'] == [10 * (f + 1) + 1 for f in frechets]
  assert k1_400['real_fvd']['mean'] == 12.0

  checks = study.claim(rows)
  assert [(c['num_samples'], c['compute']) for c in checks] == [
      (256, 'training'), (256, 'sampling'), (400, 'sampling')]  # K = 3 at 400 clips: 0.5x only
  assert 'fvd' not in checks[0]
  assert checks[2]['fvd']['pyramid']['values'] == [10 * (f + 1) + 3 for f in frechets]
  assert checks[2]['prompt_accuracy']['baseline']['mean'] == pytest.approx(
      np.mean([values[s][0] + 0.05 for s in (0, 1, 2)]))
  table = study.markdown(rows)
  assert '| 1 | - | 100 | 60 | on | 3 | 400 |' in table
  assert '| 1 | - | 100 | 60 | on | 3 | 256 |' in table
  assert table.count('| - |\n') == 6  # the six 256-clip rows have no FVD
  assert '| sampling <= 0.45x | 400 | 0.111 | fvd |' in study.claim_markdown(checks)
  out = str(tmp_path / 'study')
  study.write_study(str(tmp_path), out)
  for suffix in ('_training.png', '_sampling.png'):
    assert open(out + suffix, 'rb').read()[:8] == b'\x89PNG\r\n\x1a\n'
