"""The benchmarks as a user runs them: they finish, and their JSON shows what they claim."""

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from tests import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, timeout=600):
  env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(1))
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:]
  return proc.stdout


def test_vae_chunked_memory_stays_flat_as_the_video_grows(tmp_path):
  out = tmp_path / 'vae.json'
  stdout = run_module('benchmarks.vae_chunked', '--config=tiny', '--frames=9,33', '--size=16',
                      f'--out={out}')
  assert 'encode_chunked' in stdout and 'temp MiB' in stdout  # the table
  rows = json.loads(out.read_text())['rows']
  temp = {(r['fn'], r['frames']): r['temp_mib'] for r in rows}
  for fn in ('encode', 'decode'):
    # Whole-video activations grow with the length (4x the frames here) ...
    assert temp[fn, 33] > 2.5 * temp[fn, 9], temp
    # ... chunked ones are one chunk's: flat, and below the whole video's.
    assert temp[f'{fn}_chunked', 33] < 1.2 * temp[f'{fn}_chunked', 9], temp
    assert temp[f'{fn}_chunked', 33] < temp[fn, 33] / 2, temp


@pytest.mark.slow
def test_temporal_benchmark_reports_per_frame_cost_and_equal_cached_video(tmp_path):
  out = tmp_path / 'temporal.json'
  stdout = run_module('benchmarks.speed', '--mode=temporal',
                      '--config=configs/moving_digits.py:ar,tiny', '--units=1,5',
                      '--sample_repeats=1', f'--out={out}')
  assert 'pyramid_cached keys' in stdout
  report = json.loads(out.read_text())
  assert report['num_frames'] == 2 * report['training_frames'] == 6
  frames = report['frames']
  assert report['timed_frames'] == [1, 5]
  assert [r['seconds'] is not None for r in frames['pyramid_cached']] == [
      u in (1, 5) for u in range(6)]
  # Attended keys for every frame: equal with and without the cache; full-resolution
  # history adds a whole frame's tokens per frame, the pyramid far fewer.
  pyr = [r['attended_keys'] for r in frames['pyramid_recomputed']]
  full = [r['attended_keys'] for r in frames['full_res_history']]
  assert pyr == [r['attended_keys'] for r in frames['pyramid_cached']]
  assert pyr[0] == full[0] and pyr[1] == full[1]  # no history, then one frame at full size
  step = full[2] - full[1]
  assert all(b - a == step for a, b in zip(full[1:], full[2:]))
  assert pyr[5] - pyr[1] < (full[5] - full[1]) / 2
  assert report['max_abs_diff_cached_vs_recomputed_fp32'] < 1e-4


def test_aot_table_rows_split_their_devices_and_the_table_says_what_fits():
  from benchmarks import aot_table
  with pytest.raises(ValueError, match='do not split'):
    aot_table.Row('flux', '768p', 16, 6)
  row = aot_table.Row('sd3', '768p', 64, 8)
  assert row.fsdp == 8
  compiled = dict(argument=3.9, temp=70.0, output=3.9, alias=3.9, peak=73.9, xla_tflops=51.4,
                  analytic_tflops=37.3)
  with mock.patch.object(aot_table, 'compile_train', return_value=compiled):
    measured = aot_table.measure(row, cache_path='unused')
  assert measured['fits_80gb'] and measured['fsdp'] == 8
  assert '| sd3 768p | 64 (8 x 8) | full | 3.9 / 70.0 / 73.9 | yes |' in aot_table.table([measured])


def test_remat_cpu_probe_runs_and_scan_shows_the_saving():
  stdout = run_module('benchmarks.remat_cpu', timeout=300)
  rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in stdout.splitlines()
          if line.split() and line.split()[0] in ('unrolled', 'scan')}
  no_remat, remat = rows['scan']
  assert remat < no_remat / 3, rows   # under scan, remat keeps only the block inputs
