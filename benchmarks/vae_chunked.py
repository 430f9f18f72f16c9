r"""VAE memory against video length: whole-video vs chunked encode/decode.

  python -m benchmarks.vae_chunked --config=tiny --frames=9,17,33,65 --size=32
  python -m benchmarks.vae_chunked --config=official --size=256 --frames=9,17,33 \
      --chunk_frames=8 --chunk_latents=2 --out=bench_results/vae_chunked.json

For each length, compiles (without allocating parameters: they are abstract)
the whole-video and the chunked encode and decode, and reports XLA's buffer
analysis: temp (activations and scratch), argument and output bytes. With
`--run` it also executes them on random weights and inputs, times them, and
where the backend reports it (GPU/TPU) records the device's peak bytes in use
(the CPU backend does not: there, XLA's temp bytes are the activation peak).
Prints a table and writes JSON.
The whole-video temp memory grows with the frame count; the chunked one stays
flat (one chunk's activations), plus the input and output buffers.
"""

import json
import logging
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from flax import nnx

from pflow_jax.models import vae as vae_lib

_CONFIG = flags.DEFINE_enum('config', 'tiny', ['tiny', 'official'], 'VAE size.')
_FRAMES = flags.DEFINE_list('frames', ['9', '17', '33', '65'], 'Pixel frame counts (1 + k f_t).')
_SIZE = flags.DEFINE_integer('size', 32, 'Frame height and width in pixels.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Videos per call.')
_CHUNK_FRAMES = flags.DEFINE_integer('chunk_frames', None, 'Encode chunk (default f_t).')
_CHUNK_LATENTS = flags.DEFINE_integer('chunk_latents', 1, 'Decode chunk in latent frames.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_RUN = flags.DEFINE_bool('run', False, 'Also execute and time (allocates parameters).')
_OUT = flags.DEFINE_string('out', None, 'JSON output path (default '
                           'bench_results/vae_chunked.json).')

MiB = 2 ** 20


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


def main(_):
  config = vae_lib.VAEConfig.official() if _CONFIG.value == 'official' else vae_lib.VAEConfig.tiny()
  dtype = jnp.dtype(_DTYPE.value)
  make = lambda: vae_lib.CausalVAE(config, dtype=dtype, rngs=nnx.Rngs(0))
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  f, s = config.temporal_factor, config.spatial_factor
  chunk_frames = _CHUNK_FRAMES.value or f
  state = nnx.state(make()) if _RUN.value else None

  fns = {
      'encode': lambda st, x: nnx.merge(graphdef, st).encode(x).mean,
      'encode_chunked': lambda st, x: vae_lib.encode_chunked(
          nnx.merge(graphdef, st), x, chunk_frames).mean,
      'decode': lambda st, z: nnx.merge(graphdef, st).decode(z),
      'decode_chunked': lambda st, z: vae_lib.decode_chunked(
          nnx.merge(graphdef, st), z, _CHUNK_LATENTS.value),
  }
  rows = []
  for frames in map(int, _FRAMES.value):
    video = jax.ShapeDtypeStruct((_BATCH.value, frames, _SIZE.value, _SIZE.value,
                                  config.in_channels), jnp.float32)
    latents = jax.ShapeDtypeStruct(
        (_BATCH.value, 1 + (frames - 1) // f, _SIZE.value // s, _SIZE.value // s,
         config.latent_channels), jnp.float32)
    for name, fn in fns.items():
      arg = video if name.startswith('encode') else latents
      start = time.perf_counter()
      compiled = jax.jit(fn).lower(abstract, arg).compile()
      row = dict(fn=name, frames=frames, compile_s=round(time.perf_counter() - start, 2))
      mem = compiled.memory_analysis()
      if mem is not None:
        row.update(temp_mib=mem.temp_size_in_bytes / MiB,
                   argument_mib=mem.argument_size_in_bytes / MiB,
                   output_mib=mem.output_size_in_bytes / MiB)
      if _RUN.value:
        x = jax.random.uniform(jax.random.key(0), arg.shape, minval=-1.0, maxval=1.0)
        jax.block_until_ready(compiled(state, x))
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, x))
        row.update(run_s=round(time.perf_counter() - start, 3), peak_bytes=_peak_bytes())
      rows.append(row)
      logging.info('%s', row)
  print_table(rows, _RUN.value)
  out = _OUT.value or 'bench_results/vae_chunked.json'
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out, 'w') as fh:
    json.dump(dict(config=_CONFIG.value, size=_SIZE.value, batch=_BATCH.value,
                   chunk_frames=chunk_frames, chunk_latents=_CHUNK_LATENTS.value,
                   dtype=_DTYPE.value, device=str(jax.devices()[0]), rows=rows), fh, indent=1)
  print(f'wrote {out}')


def print_table(rows: list[dict], timed: bool) -> None:
  """One line per (function, frames): XLA's temp/argument/output MiB, and the time if run."""
  header = (f'{"function":>15} {"frames":>6} {"temp MiB":>9} {"args MiB":>9} {"out MiB":>8}'
            + (f' {"run s":>7} {"peak MiB":>9}' if timed else ''))
  print(header)
  print('-' * len(header))
  for r in sorted(rows, key=lambda r: r['fn']):  # stable: each function by growing length
    line = (f'{r["fn"]:>15} {r["frames"]:>6} {r.get("temp_mib", float("nan")):>9.2f} '
            f'{r.get("argument_mib", float("nan")):>9.2f} {r.get("output_mib", float("nan")):>8.2f}')
    if timed:
      peak = r.get('peak_bytes')
      line += f' {r["run_s"]:>7.3f} ' + (f'{peak / MiB:>9.1f}' if peak else f'{"n/a":>9}')
    print(line)


if __name__ == '__main__':
  app.run(main)
