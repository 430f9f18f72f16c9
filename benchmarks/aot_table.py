r"""Per-device memory of the paper-scale train step, compiled ahead of time (the README table).

  python -m benchmarks.aot_table [--rows=all|quick] [--json=bench_results/aot_table.json]

Each row runs `python -m pflow_jax.aot --what=train` (the real step: pyramid loss, AdamW,
EMA, on abstract inputs) for N host devices. Compiling all 24 SD3 blocks for 8 devices
took over 20 minutes of this 2-core machine, so each row compiles the model at two
reduced depths, d and 2d blocks (SD3: 1 and 2; miniFLUX: 1 double + 2 single and 2 + 4),
and extrapolates to the full depth: every block adds the same parameters, optimizer
moments, EMA, gradients and saved activations, so the per-device bytes are affine in
depth. The 'check' row compiles a third depth and prints how far the line predicts it.
Batch: three clips per data x fsdp shard (one per pyramid stage column, the least
the loss takes); the mesh's `sequence` axis splits each clip's tokens (Ulysses attention). Memory is XLA's CPU buffer assignment, which stores the
attention scores (a GPU with flash attention does not) and does not separate the remat
policies (docs/scale.md), so these are upper bounds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags


GPU_GIB = 80 * 10 ** 9 / 2 ** 30  # an "80 GB" GPU in GiB
# Full depth in the units compiled: SD3 blocks; miniFLUX's 1 double + 2 single blocks.
FULL_DEPTH = {'sd3': 24, 'flux': 8}


@dataclasses.dataclass(frozen=True)
class Row:
  family: str          # 'sd3' | 'flux'
  size: str            # '384p' | '768p'
  devices: int
  sequence: int        # devices per clip (Ulysses); fsdp takes the rest
  remat: str = 'full'

  def __post_init__(self):
    if self.devices % self.sequence:
      raise ValueError(f'{self}: {self.devices} devices do not split into sequence {self.sequence}')

  @property
  def fsdp(self) -> int:
    return self.devices // self.sequence


ROWS = (
    Row('sd3', '384p', 8, 1), Row('sd3', '384p', 16, 1), Row('sd3', '384p', 64, 1),
    Row('sd3', '384p', 8, 1, 'dots'), Row('sd3', '384p', 8, 1, 'none'),
    Row('flux', '384p', 8, 1),
    Row('sd3', '768p', 8, 1), Row('sd3', '768p', 8, 4), Row('sd3', '768p', 8, 8),
    Row('sd3', '768p', 16, 8), Row('sd3', '768p', 64, 8),
    Row('flux', '768p', 8, 2), Row('flux', '768p', 12, 6),
)
QUICK = (Row('sd3', '384p', 8, 1), Row('sd3', '768p', 8, 8))


def _depth_overrides(family: str, scale: int) -> list[str]:
  if family == 'sd3':
    return [f'--config.model.num_layers={scale}']
  return [f'--config.model.num_layers={scale}', f'--config.model.num_single_layers={2 * scale}']


def compile_train(row: Row, scale: int, cache_path: str) -> dict:
  """pflow_jax.aot's train row for `row` at `scale` depth units, in a fresh process (the
  host device count is fixed when JAX starts); kept in `cache_path`."""
  key = f'{row.family} {row.size} {row.devices} {row.sequence} {row.remat} x{scale}'
  cache = {}
  if os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  if key not in cache:
    cache[key] = _compile_train(row, scale)
    os.makedirs(os.path.dirname(cache_path) or '.', exist_ok=True)
    with open(cache_path, 'w') as f:
      json.dump(cache, f, indent=1)
  return cache[key]


def _compile_train(row: Row, scale: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'aot.json')
    cmd = [sys.executable, '-m', 'pflow_jax.aot',
           f'--config=configs/pyramid_flow_{row.family}.py:{row.size}',
           f'--devices={row.devices}', '--what=train', f'--json={out}',
           '--config.mesh.data=1', f'--config.mesh.fsdp={row.fsdp}',
           f'--config.mesh.sequence={row.sequence}',
           f'--config.model.sequence_parallel={"ulysses" if row.sequence > 1 else "none"}',
           f'--config.model.remat={row.remat}',
           f'--config.data.global_batch_size={3 * row.fsdp}',
           *_depth_overrides(row.family, scale)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)['train']


def extrapolate(small: dict, large: dict, units: float) -> dict:
  """The affine line through depth 1 and 2 (in depth units), evaluated at `units`."""
  keys = ('argument', 'temp', 'output', 'alias', 'peak', 'xla_tflops', 'analytic_tflops')
  return {k: small[k] + (units - 1) * (large[k] - small[k]) for k in keys}


def measure(row: Row, cache_path: str) -> dict:
  one, two = compile_train(row, 1, cache_path), compile_train(row, 2, cache_path)
  full = extrapolate(one, two, units=FULL_DEPTH[row.family])
  return {**dataclasses.asdict(row), 'fsdp': row.fsdp, 'depth_1': one, 'depth_2': two,
          'full': full, 'fits_80gb': full['peak'] <= GPU_GIB}


def linearity_check(row: Row, measured: dict, cache_path: str) -> dict:
  """Compiles 3 depth units and compares it with the line through 1 and 2."""
  three = compile_train(row, 3, cache_path)
  predicted = extrapolate(measured['depth_1'], measured['depth_2'], units=3)
  return {'row': dataclasses.asdict(row), 'compiled_peak': three['peak'],
          'predicted_peak': predicted['peak'],
          'relative_error': abs(predicted['peak'] - three['peak']) / three['peak']}


def table(results: list[dict], check: dict) -> str:
  lines = ['| model | devices (fsdp x sequence) | remat | per-device GiB: weights+state '
           '/ temporaries / peak | fits 80 GB | XLA / analytic TFLOP per device |',
           '|---|---|---|---|---|---|']
  for r in results:
    f = r['full']
    lines.append(
        f"| {r['family']} {r['size']} | {r['devices']} ({r['fsdp']} x {r['sequence']}) | "
        f"{r['remat']} | {f['argument']:.1f} / {f['temp']:.1f} / {f['peak']:.1f} | "
        f"{'yes' if r['fits_80gb'] else 'no'} | {f['xla_tflops']:.1f} / "
        f"{f['analytic_tflops']:.1f} |")
  c = check['row']
  lines.append(f"\ncheck: {c['family']} {c['size']} on {c['devices']} devices at 3 depth units: "
               f"compiled peak {check['compiled_peak']:.3f} GiB, the line predicts "
               f"{check['predicted_peak']:.3f} GiB ({100 * check['relative_error']:.2f}% off)")
  return '\n'.join(lines)


def main(argv):
  del argv
  flag = flags.FLAGS
  rows = QUICK if flag.rows == 'quick' else ROWS
  results = []
  for i, row in enumerate(rows):
    results.append(measure(row, flag.cache))
    r = results[-1]['full']
    print(f'[{i + 1}/{len(rows)}] {row}: peak {r["peak"]:.1f} GiB per device', flush=True)
  check = linearity_check(rows[-1], results[-1], flag.cache)
  print(table(results, check))
  os.makedirs(os.path.dirname(flag.json) or '.', exist_ok=True)
  with open(flag.json, 'w') as f:
    json.dump({'rows': results, 'linearity_check': check}, f, indent=1)
  print(f'wrote {flag.json}')


if __name__ == '__main__':
  # Defined here, not at import, so tests can import the module beside other benchmarks.
  flags.DEFINE_enum('rows', 'all', ['all', 'quick'], "'quick': two rows, for a smoke run.")
  flags.DEFINE_string('json', 'bench_results/aot_table.json', 'JSON output path.')
  flags.DEFINE_string('cache', 'bench_results/aot_table_compiles.json',
                      "Each compile's result, kept so that a rerun skips finished ones.")
  app.run(main)
