r"""Samples videos from a trained workdir.

  python -m pflow_jax.sample --workdir=runs/digits --prompt "a 3 moving left" \
      --num_samples 4 --out samples.mp4 [--steps_per_stage 20,20,20 --guidance_scale 7 --seed 0]

Writes the video (.mp4 or .gif: the samples side by side) and a PNG frame grid
next to it (one row per sample). Uses the EMA parameters of the latest (or
--step) checkpoint and the config saved in the workdir.
"""

import json
import os

from absl import flags, logging
import jax
import ml_collections
import numpy as np

from pflow_jax import config as config_lib
from pflow_jax import cli, inference
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import checkpoint, state as state_lib
from pflow_jax.data import video_io

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
_PROMPT = flags.DEFINE_string('prompt', None, 'Text prompt.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'Videos to generate.')
_OUT = flags.DEFINE_string('out', 'samples.mp4', 'Output video path (.mp4 or .gif).')
_STEPS = flags.DEFINE_list('steps_per_stage', None,
                           'Euler steps per pyramid stage (default: the config\'s).')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None, 'CFG scale (default: the config\'s).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_FPS = flags.DEFINE_integer('fps', None, 'Frames per second of the output (default: config).')
flags.mark_flags_as_required(['workdir', 'prompt'])


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.rules = tuple(tuple(r) if not isinstance(r[1], list) else (r[0], tuple(r[1]))
                       for r in config.rules)
  config_lib.validate(config)
  return config


def run(workdir: str, prompt: str, num_samples: int, out: str, steps_per_stage, guidance_scale,
        seed: int, step: int | None, fps: int | None) -> str:
  ext = os.path.splitext(out)[1].lower()
  if ext not in ('.mp4', '.gif'):
    raise ValueError(f'--out must end in .mp4 or .gif, got {out!r}')
  if num_samples < 1:
    raise ValueError(f'--num_samples must be >= 1, got {num_samples}')
  config = load_config(workdir)
  steps = [int(s) for s in steps_per_stage] if steps_per_stage else config.sample.steps_per_stage
  guidance = config.sample.guidance_scale if guidance_scale is None else guidance_scale

  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  tx = state_lib.make_optimizer(config.optim)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  step = ckpt.latest_step() if step is None else step
  if step is None or step not in ckpt.all_steps():
    raise FileNotFoundError(f'no checkpoint {"" if step is None else step} in {ckpt.directory} '
                            f'(have {ckpt.all_steps()})')
  target = {'ema_params': jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract.ema_params, shardings.ema_params)}
  params = ckpt.restore_subtree(step, target)['ema_params']
  logging.info('sampling from step %d of %s', step, workdir)

  codec = latent_codec.make_codec(config.latent)
  generate = inference.make_generate_fn(config, graphdef, codec, num_samples=num_samples,
                                        steps_per_stage=steps, guidance_scale=guidance)
  tokens = inference.tokenize_prompts(config, [prompt] * num_samples)
  with jax.set_mesh(mesh):
    videos = inference.to_uint8(generate(params, tokens, jax.random.key(seed)))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  strip = np.concatenate(list(videos), axis=2)
  video_io.write_video(out, strip, fps=fps or config.sample.fps)
  grid = os.path.splitext(out)[0] + '.png'
  video_io.write_frame_grid(grid, videos)
  ckpt.close()
  return grid


def main(argv):
  del argv
  grid = run(_WORKDIR.value, _PROMPT.value, _NUM_SAMPLES.value, _OUT.value, _STEPS.value,
             _GUIDANCE.value, _SEED.value, _STEP.value, _FPS.value)
  print(f'wrote {_OUT.value} and {grid}')


if __name__ == '__main__':
  cli.run(main, user_errors=(checkpoint.CheckpointError,))
