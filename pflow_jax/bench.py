r"""Benchmarks: the pyramid (stages=K) against full-resolution flow matching (stages=1).

  python -m pflow_jax.bench --config=configs/moving_digits.py [--out=bench_results/pyramid.json]

For the same DiT, measures the training-step time (median of --steps timed
steps after warm-up and compilation) with analytic FLOPs, and the sampling time
at the config's steps per stage (the official [20, 20, 20]) against stages=1
with the same total number of Euler steps. Prints a table and writes JSON.
Synthetic inputs: the timing does not depend on the data.
"""

import copy
import json
import os
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from pflow_jax import config as config_lib
from pflow_jax import inference
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import flops, state as state_lib, step as step_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
_OUT = flags.DEFINE_string('out', 'bench_results/pyramid.json', 'JSON output path.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed training steps per variant.')
_SAMPLE_REPEATS = flags.DEFINE_integer('sample_repeats', 2, 'Timed sampling runs per variant.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 2, 'Videos per sampling run.')
flags.mark_flags_as_required(['config'])


def _timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def synthetic_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  b = config.data.global_batch_size
  s = config.data.image_size
  video = rng.integers(0, 256, (b, config.data.num_frames, s, s, config.latent.channels),
                       dtype=np.uint8)
  tokens = inference.tokenize_prompts(config, ['a 3 moving left and a 7 moving down'] * b)
  return {'video': video, 'tokens': tokens}


def variant(config, stages: int):
  c = copy.deepcopy(config)
  with c.unlocked():
    total = sum(config.sample.steps_per_stage)
    c.pyramid.stages = stages
    c.pyramid.stage_range = None
    if stages == 1:
      c.pyramid.sample_ratios = [1]
      c.sample.steps_per_stage = [total]
  config_lib.validate(c)
  return c


def bench_variant(config, steps: int, sample_repeats: int, num_samples: int) -> dict:
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  state = state_lib.init_state(config, mesh, tx, shardings)
  batch = synthetic_batch(config, np.random.default_rng(0))
  train_step = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, codec, tx),
                                       mesh, config, shardings, batch)
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
    tokens = inference.tokenize_prompts(config, ['a 3 moving left'] * num_samples)
    key = jax.random.key(0)
    jax.block_until_ready(generate(state.ema_params, tokens, key))  # compile
    sample_times = _timed(lambda: generate(state.ema_params, tokens, key), sample_repeats)
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


def main(argv):
  del argv
  config = _CONFIG.value
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
  report = {'device': str(jax.devices()[0].device_kind), 'num_devices': jax.device_count(),
            'batch_size': config.data.global_batch_size, 'results': results, 'ratios': ratios}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
