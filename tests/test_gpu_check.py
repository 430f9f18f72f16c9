"""benchmarks/gpu_check.py as its CPU smoke run: it finishes, skips what needs a GPU, and
its JSON holds the numbers its table claims; and its bf16/fp32 comparison can fail."""

import json
import os
import subprocess
import sys

import numpy as np

from benchmarks import gpu_check
from tests import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_skips_cudnn_passes_bf16_and_times_a_step(tmp_path):
  out = tmp_path / 'gpu_check.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=xla_env.xla_flags(1))
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.gpu_check', '--smoke',
                         f'--json={out}'], cwd=ROOT, env=env, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert 'bf16_vs_fp32' in proc.stdout and 'skipped (no GPU)' in proc.stdout  # the table
  report = json.loads(out.read_text())
  assert report['backend'] == 'cpu' and report['smoke'] and report['passed']
  assert report['checks']['attention_parity']['status'] == 'skipped (no GPU)'
  bf16 = report['checks']['bf16_vs_fp32']
  assert bf16['status'] == 'pass' and bf16['passed']
  assert set(bf16['errors']) == set(bf16['bounds']) == {'loss', 'grad_norm', 'update'}
  for name, bound in bf16['bounds'].items():
    assert 0 <= bf16['errors'][name] <= bound, (name, bf16['errors'])
  assert bf16['errors']['update'] > 0  # the steps moved the weights, and bf16 differs
  timed = [r for r in report['mfu'] if r['status'] == 'ok']
  assert timed, report['mfu']
  for r in timed:
    assert r['step_s'] > 0 and r['train_tflops_per_step'] > 0 and r['tokens_per_s'] > 0
    assert r['mfu'] is None  # no known peak for a CPU
  assert {r['status'] for r in report['mfu'] if r['attention'] == 'cudnn'} == {
      'skipped (no GPU)'}


def test_bf16_comparison_fails_beyond_its_bounds():
  params0 = {'w': np.zeros((4, 4), np.float32)}
  fp32 = {'w': np.full((4, 4), 1e-3, np.float32)}
  metrics = [{'loss': 1.0, 'grad_norm': 2.0}, {'loss': 0.9, 'grad_norm': 1.5}]
  close = gpu_check.bf16_fp32_errors(metrics, metrics, params0,
                                     {'w': fp32['w'] * (1 + 1e-3)}, fp32)
  assert gpu_check.within(close, gpu_check.BF16_BOUNDS), close
  # A loss 10% off, the gradient norm doubled, the update flipped: each alone fails.
  bad_metrics = [{'loss': 1.1, 'grad_norm': 2.0}, {'loss': 0.9, 'grad_norm': 3.0}]
  far = gpu_check.bf16_fp32_errors(bad_metrics, metrics, params0, {'w': -fp32['w']}, fp32)
  assert far['loss'] > 0.05 and far['grad_norm'] > 0.5 and far['update'] > 1.5, far
  for name in far:
    one_bad = dict(close, **{name: far[name]})
    assert not gpu_check.within(one_bad, gpu_check.BF16_BOUNDS), name
  assert not gpu_check.within(dict(close, loss=float('nan')), gpu_check.BF16_BOUNDS)
