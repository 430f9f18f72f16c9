r"""Per-device memory of the paper-scale train step, compiled ahead of time (the README table).

  python -m benchmarks.aot_table [--rows=all|quick] [--json=bench_results/aot_table.json]

Each row runs `python -m pflow_jax.aot --what=train` (the real step: pyramid loss, AdamW,
EMA, the temporal pyramid) for N host devices at the model's full depth, with
`model.scan_blocks`: the blocks run as one `lax.scan`, so one block is compiled (a
minute, where the 24 unrolled SD3 blocks took over 20) and the compile keeps what remat
saves, which XLA's CPU compile of unrolled blocks does not (benchmarks/remat_cpu.py).
Batch: three clips per data x fsdp shard (one per pyramid stage column, the least the
loss takes); the mesh's `sequence` axis splits each clip's tokens (Ulysses attention).
Memory is XLA's CPU buffer assignment, whose attention stores the fp32 score matrices
(flash attention on a GPU does not), so the temporaries are upper bounds there.
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
    Row('sd3', '384p', 8, 1), Row('sd3', '384p', 64, 1),
    Row('sd3', '384p', 8, 1, 'dots'), Row('sd3', '384p', 8, 1, 'none'),
    Row('flux', '384p', 8, 1),
    Row('sd3', '768p', 8, 8), Row('sd3', '768p', 16, 8), Row('sd3', '768p', 64, 8),
    Row('sd3', '768p', 64, 8, 'none'), Row('flux', '768p', 12, 6),
)
QUICK = (Row('sd3', '384p', 8, 1), Row('sd3', '768p', 8, 8))


def compile_train(row: Row, cache_path: str) -> dict:
  """pflow_jax.aot's train row for `row`, in a fresh process (the host device count is
  fixed when JAX starts); kept in `cache_path`."""
  key = f'{row.family} {row.size} {row.devices} {row.sequence} {row.remat} scanned'
  cache = {}
  if os.path.exists(cache_path):
    with open(cache_path) as f:
      cache = json.load(f)
  if key not in cache:
    cache[key] = _compile_train(row)
    os.makedirs(os.path.dirname(cache_path) or '.', exist_ok=True)
    with open(cache_path, 'w') as f:
      json.dump(cache, f, indent=1)
  return cache[key]


def _compile_train(row: Row) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'aot.json')
    cmd = [sys.executable, '-m', 'pflow_jax.aot',
           f'--config=configs/pyramid_flow_{row.family}.py:{row.size}',
           f'--devices={row.devices}', '--what=train', f'--json={out}',
           '--config.mesh.data=1', f'--config.mesh.fsdp={row.fsdp}',
           f'--config.mesh.sequence={row.sequence}',
           f'--config.model.sequence_parallel={"ulysses" if row.sequence > 1 else "none"}',
           f'--config.model.remat={row.remat}',
           f'--config.data.global_batch_size={3 * row.fsdp}', '--config.model.scan_blocks=True']
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f'{" ".join(cmd)} failed:\n{done.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)['train']


def measure(row: Row, cache_path: str) -> dict:
  compiled = compile_train(row, cache_path)
  return {**dataclasses.asdict(row), 'fsdp': row.fsdp, **compiled,
          'fits_80gb': compiled['peak'] <= GPU_GIB}


def table(results: list[dict]) -> str:
  # No XLA FLOP column: cost_analysis() counts a scan's body once.
  lines = ['| model | devices (fsdp x sequence) | remat | per-device GiB: weights+state '
           '/ temporaries / peak | fits 80 GB | analytic TFLOP per device |',
           '|---|---|---|---|---|---|']
  for r in results:
    lines.append(
        f"| {r['family']} {r['size']} | {r['devices']} ({r['fsdp']} x {r['sequence']}) | "
        f"{r['remat']} | {r['argument']:.1f} / {r['temp']:.1f} / {r['peak']:.1f} | "
        f"{'yes' if r['fits_80gb'] else 'no'} | {r['analytic_tflops']:.1f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  flag = flags.FLAGS
  rows = QUICK if flag.rows == 'quick' else ROWS
  results = []
  for i, row in enumerate(rows):
    results.append(measure(row, flag.cache))
    print(f'[{i + 1}/{len(rows)}] {row}: peak {results[-1]["peak"]:.1f} GiB per device',
          flush=True)
  print(table(results))
  os.makedirs(os.path.dirname(flag.json) or '.', exist_ok=True)
  with open(flag.json, 'w') as f:
    json.dump({'rows': results}, f, indent=1)
  print(f'wrote {flag.json}')


if __name__ == '__main__':
  # Defined here, not at import, so tests can import the module beside other benchmarks.
  flags.DEFINE_enum('rows', 'all', ['all', 'quick'], "'quick': two rows, for a smoke run.")
  flags.DEFINE_string('json', 'bench_results/aot_table.json', 'JSON output path.')
  flags.DEFINE_string('cache', 'bench_results/aot_table_compiles.json',
                      "Each compile's result, kept so that a rerun skips finished ones.")
  app.run(main)
