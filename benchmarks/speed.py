r"""Benchmarks, each printing a table and writing JSON.

  python -m benchmarks.speed --config=configs/moving_digits.py [--out=bench_results/pyramid.json]
  python -m benchmarks.speed --mode=temporal --config=configs/moving_digits.py:ar \
      [--units=1,4,8,15] [--out=bench_results/temporal.json]

--mode=pyramid: for the same DiT, the training-step time (median of --steps
timed steps after warm-up and compilation) with analytic FLOPs, and the
sampling time at the config's steps per stage (the official [20, 20, 20]),
for stages=K against full-resolution flow matching (stages=1) with the same
total number of Euler steps.

--mode=temporal: the cost of each frame unit of an autoregressive video
--length_factor times the training clips, keeping the whole history (the
official inference). Per frame unit in --units (default: 0, 1, 2, 4, ... and
the last, since each timed unit compiles its own program): the keys a
full-resolution target token attends (text + history + target) and the median
wall time of generating that unit (all stages and steps) with a program
compiled for its exact history length, for (a) the temporal pyramid with the
history's keys/values cached, (b) the temporal pyramid recomputing them at
every step, (c) full-resolution history (no compression), recomputed. Then
the whole video is generated with (a) and with (b) in float32 and their
largest difference reported (equal up to float rounding).
Synthetic inputs and perturbed random weights: timing does not depend on them.
"""

import copy
import json
import logging
import os
import statistics
import time

from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from pflow_jax import cli, config as config_lib, inference
from pflow_jax.data.synthetic import synthetic_batch
from pflow_jax.models import latent_codec
from pflow_jax.models.flow_model import FlowModel
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import flops, state as state_lib, step as step_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'pyramid', ['pyramid', 'temporal'], 'What to benchmark.')
_OUT = flags.DEFINE_string('out', None, 'JSON output path (default bench_results/<mode>.json).')
_LENGTH_FACTOR = flags.DEFINE_integer('length_factor', 2, 'temporal: video length in '
                                      'training clips.')
_UNITS = flags.DEFINE_list('units', None, 'temporal: the frame units to time (default: '
                           '0, 1, 2, 4, ... and the last).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed training steps per variant.')
_SAMPLE_REPEATS = flags.DEFINE_integer('sample_repeats', 2, 'Timed sampling runs per variant '
                                       '(temporal: per frame).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 2, 'Videos per sampling run.')
flags.mark_flags_as_required(['config'])


def _timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def variant(config, stages: int):
  c = copy.deepcopy(config)
  with c.unlocked():
    total = sum(config.sample.steps_per_stage)
    c.pyramid.stages = stages
    c.pyramid.stage_range = None
    if stages == 1:
      c.pyramid.sample_ratios = (1,)
      c.sample.steps_per_stage = (total,)
      c.sample.video_steps_per_stage = (sum(config.sample.video_steps_per_stage),)
  config_lib.validate(c)
  return c


def bench_variant(config, steps: int, sample_repeats: int, num_samples: int) -> dict:
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  state = state_lib.init_state(config, mesh, tx, shardings)
  batch = synthetic_batch(config, np.random.default_rng(0))
  train_step = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, tx),
                                       mesh, config, shardings, batch, codec)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    state, _ = jax.block_until_ready(train_step(state, batch))
    compile_s = time.perf_counter() - start

    def one_step():
      nonlocal state
      state, m = train_step(state, batch)
      return m

    step_times = _timed(one_step, steps)
    generate = inference.make_generate_fn(
        config, graphdef, codec, num_samples=num_samples,
        steps_per_stage=config.sample.steps_per_stage,
        guidance_scale=config.sample.guidance_scale)
    text = inference.prompt_text(config, ['a 3 moving left'] * num_samples)
    key = jax.random.key(0)
    jax.block_until_ready(generate(state.ema_params, text, key))  # compile
    sample_times = _timed(lambda: generate(state.ema_params, text, key), sample_repeats)
  step_s = statistics.median(step_times)
  train_flops = flops.train_step_flops(config)
  return {
      'stages': config.pyramid.stages,
      'steps_per_stage': list(config.sample.steps_per_stage),
      'video_tokens_per_stage': flops.stage_video_tokens(config),
      'train_step_s': step_s,
      'train_step_compile_s': compile_s,
      'train_step_tflops': train_flops / 1e12,
      'train_tflops_per_s': train_flops / step_s / 1e12,
      'sample_s': statistics.median(sample_times),
      'sample_tflops': flops.sample_flops(config, config.sample.steps_per_stage,
                                          num_samples) / 1e12,
  }


def perturbed_params(config, seed: int = 0):
  """(graphdef, parameters + noise): zero-initialised layers take part, as in a trained model."""
  graphdef, params = nnx.split(FlowModel(config, rngs=nnx.Rngs(config.seed)))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), params)
  return graphdef, params


def attended_keys(config, generator: inference.VideoGenerator, unit: int) -> int:
  """Keys one full-resolution target token attends at frame `unit` (all text valid)."""
  _, h, w = config_lib.latent_size(config)
  p = config.model.patch_size
  target = (h // p) * (w // p)
  history = generator.plans(generator.history_length(unit))[-1]
  return flops.dit_text_tokens(config) + history.tokens(min(unit, generator.window)) + target


def _frame_costs(name: str, config, graphdef, params, codec, text, num_frames: int,
                 units: list[int], repeats: int) -> list[dict]:
  """Per frame 0..num_frames-1: the keys a full-resolution target token attends, and for the
  frames in `units` the median wall time of generating that frame with a program compiled
  for its exact history length (None for the others)."""
  gen = inference.VideoGenerator(config, graphdef, codec, num_frames=num_frames,
                                 window=num_frames - 1, pad_history=False)
  _, h, w = config_lib.latent_size(config)
  frames = jax.random.normal(jax.random.key(1), (inference.batch_size(text), num_frames, h, w,
                                                 codec.latent_channels))
  rows = [{'frame': u, 'attended_keys': attended_keys(config, gen, u), 'seconds': None}
          for u in range(num_frames)]
  for u in units:
    run = lambda u=u: gen.generate_unit(params, text, frames, u, jax.random.key(0))
    jax.block_until_ready(run())  # compile
    rows[u]['seconds'] = statistics.median(_timed(run, repeats))
    logging.info('%s frame %d: %.3f s', name, u, rows[u]['seconds'])
  return rows


def bench_temporal(config, length_factor: int, units: list[int] | None, repeats: int) -> dict:
  training_frames = config_lib.latent_size(config)[0]
  num_frames = length_factor * training_frames
  if units is None:  # 0, 1, 2, 4, ... and the last: each timed unit compiles its own program
    units = sorted({0, num_frames - 1} | {2 ** i for i in range(num_frames.bit_length())
                                          if 2 ** i < num_frames})
  units = sorted(set(units))
  if not units or units[0] < 0 or units[-1] >= num_frames:
    raise ValueError(f'--units must lie in [0, {num_frames - 1}], got {units}')
  graphdef, params = perturbed_params(config)
  codec = latent_codec.make_codec(config.latent)
  text = inference.prompt_text(config, ['a 3 moving left'])
  variants = {'pyramid_cached': (True, True), 'pyramid_recomputed': (True, False),
              'full_res_history': (False, False)}
  configs = {}
  for name, (compress, cache) in variants.items():
    c = copy.deepcopy(config)
    with c.unlocked():
      c.temporal.compress_history = compress
      c.sample.cache_history = cache
    configs[name] = c
  results = {name: _frame_costs(name, c, graphdef, params, codec, text, num_frames, units,
                                repeats) for name, c in configs.items()}
  # Equal videos: the whole autoregressive generation, cached against recomputed, in float32
  # (bf16 rounds the two summation orders differently, and the error compounds over frames).
  # Padded history: two programs per variant.
  fp32 = {name: copy.deepcopy(configs[name]) for name in ('pyramid_cached', 'pyramid_recomputed')}
  for c in fp32.values():
    c.dtype = 'float32'
  fp32_graphdef, fp32_params = perturbed_params(fp32['pyramid_cached'])  # the same model for both
  videos = {name: inference.VideoGenerator(
      c, fp32_graphdef, codec, num_frames=num_frames, window=num_frames - 1).latents(
          fp32_params, text, jax.random.key(0)) for name, c in fp32.items()}
  diff = float(jnp.abs(videos['pyramid_cached'] - videos['pyramid_recomputed']).max())
  seconds = lambda name, u: results[name][u]['seconds']
  keys = lambda name, u: results[name][u]['attended_keys']
  last, video_units = units[-1], [u for u in units if u > 0]  # frame 0: no history to cache
  ratios = {
      f'keys_full_res_over_pyramid_at_frame_{num_frames - 1}':
          keys('full_res_history', num_frames - 1) / keys('pyramid_recomputed', num_frames - 1),
      f'time_full_res_over_pyramid_at_frame_{last}':
          seconds('full_res_history', last) / seconds('pyramid_recomputed', last),
  }
  if video_units:
    ratios['time_recomputed_over_cached_timed_video_frames'] = (
        sum(seconds('pyramid_recomputed', u) for u in video_units)
        / sum(seconds('pyramid_cached', u) for u in video_units))
  if len(video_units) > 1:  # frame 0 is an image with its own steps: growth is over video frames
    a, b = video_units[0], video_units[-1]
    for name in ('pyramid_recomputed', 'full_res_history'):
      ratios[f'growth_{name}_frame_{b}_over_frame_{a}'] = seconds(name, b) / seconds(name, a)
  header = f'{"frame":>5} ' + ' '.join(f'{n + " keys":>26} {"s":>7}' for n in variants)
  print(f'autoregressive generation of {num_frames} latent frames ({length_factor}x the '
        f'{training_frames}-frame training clips), whole history kept; time: median of '
        f'{repeats} runs of one frame (all its stages and steps), exact history length, for '
        f'frames {units}')
  print(header)
  print('-' * len(header))
  for u in range(num_frames):
    cells = []
    for n in variants:
      t = seconds(n, u)
      cells.append(f'{keys(n, u):>26} ' + (f'{t:>7.3f}' if t is not None else f'{"-":>7}'))
    print(f'{u:>5} ' + ' '.join(cells))
  print(f'max |cached - recomputed| over the whole {num_frames}-frame video (float32): '
        f'{diff:.2e}')
  for k, v in ratios.items():
    print(f'{k}: {v:.2f}x')
  return {'num_frames': num_frames, 'training_frames': training_frames, 'timed_frames': units,
          'timing_repeats': repeats, 'frames': results,
          'max_abs_diff_cached_vs_recomputed_fp32': diff, 'ratios': ratios}


def bench_pyramid(config) -> dict:
  if config.temporal.autoregressive:
    raise ValueError('--mode=pyramid compares joint-clip training; use a config without '
                     'temporal.autoregressive (or --mode=temporal)')
  results = [bench_variant(variant(config, k), _STEPS.value, _SAMPLE_REPEATS.value,
                           _NUM_SAMPLES.value)
             for k in (config.pyramid.stages, 1)]
  pyr, full = results
  ratios = {
      'train_step_time_full_over_pyramid': full['train_step_s'] / pyr['train_step_s'],
      'train_flops_full_over_pyramid': full['train_step_tflops'] / pyr['train_step_tflops'],
      'sample_time_full_over_pyramid': full['sample_s'] / pyr['sample_s'],
      'sample_flops_full_over_pyramid': full['sample_tflops'] / pyr['sample_tflops'],
  }
  header = (f'{"stages":>6} {"steps/stage":>12} {"train step s":>13} {"train TFLOP":>12} '
            f'{"TFLOP/s":>8} {"sample s":>9} {"sample TFLOP":>13}')
  print(header)
  print('-' * len(header))
  for r in results:
    print(f'{r["stages"]:>6} {",".join(map(str, r["steps_per_stage"])):>12} '
          f'{r["train_step_s"]:>13.4f} {r["train_step_tflops"]:>12.4f} '
          f'{r["train_tflops_per_s"]:>8.3f} {r["sample_s"]:>9.3f} {r["sample_tflops"]:>13.4f}')
  for k, v in ratios.items():
    print(f'{k}: {v:.2f}x')
  return {'batch_size': config.data.global_batch_size, 'results': results, 'ratios': ratios}


def main(argv):
  del argv
  config = _CONFIG.value
  config_lib.validate(config)
  if _MODE.value == 'temporal':
    units = None if _UNITS.value is None else [int(u) for u in _UNITS.value]
    report = bench_temporal(config, _LENGTH_FACTOR.value, units, _SAMPLE_REPEATS.value)
  else:
    report = bench_pyramid(config)
  report = {'mode': _MODE.value, 'device': str(jax.devices()[0].device_kind),
            'num_devices': jax.device_count(), **report}
  out = _OUT.value or f'bench_results/{_MODE.value}.json'
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main)
