r"""Peak host memory of `python -m pflow_jax.convert` on a fake official miniFLUX folder.

  python -m benchmarks.convert_memory --heads=10 [--out=bench_results/convert_memory.json]

Writes an official-layout DiT folder (key names and shapes from our key map, in the
official layouts, random values, two safetensors shards) at `--heads` x 64 width, and
the same at one head as the baseline (Python, JAX, orbax). It converts each in a
child process and reads the child's peak RSS. The gap between the two, over the
weights' fp32 size, is the host memory the weights cost (the target: under 2x).
Prints a table and writes JSON.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags
import numpy as np
from safetensors.numpy import save_file

from configs import pyramid_flow_flux
from pflow_jax.models import dit, official

_HEADS = flags.DEFINE_integer('heads', 10, 'Attention heads of 64 (the release has 30).')
_OUT = flags.DEFINE_string('out', 'bench_results/convert_memory.json', 'JSON output path.')

CONFIG_FILE = '''from configs import pyramid_flow_flux

def get_config():
  c = pyramid_flow_flux.get_config('384p')
  c.model.update(num_attention_heads={heads}, caption_projection_dim={width})
  return c
'''


def official_shape(path: str, shape: tuple[int, ...], cfg: dit.DiTConfig) -> tuple[int, ...]:
  """The official layout of one of our parameters (torch conv and linear weights)."""
  if path == 'pos_embed.proj.kernel':
    return (shape[1], cfg.in_channels, cfg.patch_size, cfg.patch_size)
  return shape[::-1] if path.endswith('.kernel') else shape


def write_fake_folder(folder: str, heads: int) -> int:
  """An official-layout miniFLUX folder at `heads` x 64 width; returns its parameter count."""
  os.makedirs(folder)
  with open(os.path.join(folder, 'pflow_config.py'), 'w') as f:
    f.write(CONFIG_FILE.format(heads=heads, width=heads * 64))
  config = pyramid_flow_flux.get_config('384p')
  config.model.update(num_attention_heads=heads, caption_projection_dim=heads * 64)
  cfg = dit.DiTConfig(**config.model)
  rng = np.random.default_rng(0)
  keys = sorted(official.dit_key_map(cfg).items())
  count = 0
  for shard, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
    tensors = {k: rng.standard_normal(official_shape(p, s, cfg), np.float32)
               for k, (p, s) in part}
    count += sum(t.size for t in tensors.values())
    save_file(tensors, os.path.join(folder, f'diffusion_pytorch_model-{shard + 1:05d}-of-'
                                            '00002.safetensors'))
    del tensors
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump({'_class_name': 'PyramidFluxTransformer'}, f)
  return count


def peak_rss_of_conversion(folder: str, workdir: str) -> float:
  """GiB: the peak resident memory of a converter child process."""
  code = ('import resource, runpy, sys; sys.argv = sys.argv[1:]\n'
          'try:\n  runpy.run_module("pflow_jax.convert", run_name="__main__")\n'
          'except SystemExit as e:\n  assert not e.code, e.code\n'
          'print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')
  result = subprocess.run(
      [sys.executable, '-c', code, 'convert', f'--config={folder}/pflow_config.py',
       f'--dit={folder}', f'--workdir={workdir}'], capture_output=True, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  return int(result.stdout.split('PEAK_KB')[1].split()[0]) / 2**20


def main(argv):
  del argv
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, heads in (('baseline', 1), ('model', _HEADS.value)):
      folder = os.path.join(tmp, name)
      params = write_fake_folder(folder, heads)
      rows[name] = {'heads': heads, 'parameters': params, 'weights_gib': params * 4 / 2**30,
                    'peak_rss_gib': peak_rss_of_conversion(folder, os.path.join(tmp, name + '_w'))}
  extra = rows['model']['peak_rss_gib'] - rows['baseline']['peak_rss_gib']
  rows['weights_cost_x'] = extra / rows['model']['weights_gib']
  print(f"{'folder':10} {'parameters':>13} {'fp32 GiB':>9} {'peak RSS GiB':>13}")
  for name in ('baseline', 'model'):
    r = rows[name]
    print(f"{name:10} {r['parameters']:13,} {r['weights_gib']:9.2f} {r['peak_rss_gib']:13.2f}")
  print(f'the weights cost {extra:.2f} GiB of host memory: {rows["weights_cost_x"]:.2f}x their '
        'size (target < 2x)')
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
