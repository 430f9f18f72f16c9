r"""Memorisation probe: can a config's DiT learn a few real clips, and which stage fails?

  python -m benchmarks.memorisation --config=configs/moving_digits.py --clips=2 --steps=1200
  python -m benchmarks.memorisation --config=configs/moving_digits.py:tiny \
      --config.pyramid.prediction=clean --steps=1500 --lr=3e-3

Trains on the first --clips training clips with different digits (each --copies times per
batch, no caption dropout), then samples every caption twice with guidance 1 and reports
each sample's squared pixel error to its own clip over a black clip's error, and whether its
nearest clip is its own. A memorised sample is far under 1. After training, each pyramid
stage is tried alone: started from its true training start (the clip's own latents and one
noise draw), integrated to the end in 10 Euler steps, its relative error to the true end
(|x - end|^2 / |end|^2), and the relative error of the velocity on the training path at
ratios 0.9 / 0.5 / 0.1. A stage that fails from its true start is where sampling breaks,
whatever the loss says. Writes bench_results/memorisation.json (--json).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from ml_collections import config_flags

from pflow_jax import inference
from pflow_jax.data import datasets, moving_digits as digits_data
from pflow_jax.models import latent_codec, text as text_lib
from pflow_jax.parallel import mesh as mesh_lib, rules
from pflow_jax.pyramid import flow, sampler, schedule as schedule_lib
from pflow_jax.training import state as state_lib, step as step_lib

EULER_STEPS = 10
PROBE_RATIOS = (0.9, 0.5, 0.1)


def distinct_clips(config: ml_collections.ConfigDict, count: int) -> tuple[np.ndarray, list]:
  """The first `count` training clips whose first digits differ, and their captions."""
  if not 1 <= count <= 10:
    raise ValueError(f'need 1 to 10 clips of different digits, got {count}')
  cfg = datasets.moving_digits_config(config.data)
  clips, captions, digits = [], [], []
  index = 0
  while len(clips) < count:
    example = digits_data.generate_example(index, cfg, 'train')
    index += 1
    if example['digits'][0] not in digits:
      digits.append(example['digits'][0])
      clips.append(example['video'])
      captions.append(example['caption'])
  return np.stack(clips), captions


def clip_errors(videos: np.ndarray, clips: np.ndarray) -> np.ndarray:
  """Mean squared pixel error (pixels in [0, 1]) of each uint8 video to each clip: [N, M]."""
  v = videos.astype(np.float32)[:, None] / 255.0
  c = clips.astype(np.float32)[None] / 255.0
  return ((v - c) ** 2).mean(axis=(2, 3, 4, 5))


class Probe:
  """A config's model trained on a fixed batch of clips, and its samples of their captions."""

  def __init__(self, config: ml_collections.ConfigDict, clips: np.ndarray, captions: list,
               copies: int, num_steps: int):
    config = config.copy_and_resolve_references()
    config.pyramid.text_dropout = 0.0
    config.data.global_batch_size = copies * len(clips)
    config.train.num_steps = num_steps
    self.config, self.clips, self.captions = config, clips, captions
    self.batch = {'video': np.concatenate([clips] * copies),
                  'tokens': text_lib.tokenize(list(captions) * copies, config.text.max_length)}
    self.mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
    self.codec = latent_codec.make_codec(config.latent)
    tx = state_lib.make_optimizer(config.optim, num_steps)
    self.graphdef, _, shardings = state_lib.state_shardings(config, self.mesh, tx)
    self.state = state_lib.init_state(config, self.mesh, tx, shardings)
    self._step = step_lib.jit_train_step(step_lib.make_train_step(config, self.graphdef, tx),
                                         self.mesh, config, shardings, self.batch, self.codec)
    n = 2 * len(clips)  # each caption twice, on different noise
    self._generate = inference.make_generate_fn(
        config, self.graphdef, self.codec, num_samples=n,
        steps_per_stage=(EULER_STEPS,) * config.pyramid.stages, guidance_scale=1.0)
    self._text = inference.prompt_text(config, list(captions) * 2)
    self.own = np.arange(n) % len(clips)
    self.blank = clip_errors(np.zeros_like(clips), clips)[0][self.own]
    self.steps_done = 0

  def train(self, num_steps: int) -> float:
    """Trains num_steps more steps; returns the last loss."""
    with jax.set_mesh(self.mesh):
      for _ in range(num_steps):
        self.state, metrics = self._step(self.state, self.batch, self.steps_done)
        self.steps_done += 1
    return float(metrics['loss'])

  def sample_errors(self) -> np.ndarray:
    """[2 * clips, clips]: each sample's squared pixel error to every clip (raw weights)."""
    with jax.set_mesh(self.mesh):
      videos = inference.to_uint8(self._generate(self.state.params, self._text,
                                                 jax.random.key(1)))
    return clip_errors(videos, self.clips)

  def stage_errors(self) -> list[dict]:
    """Per stage: the relative error of the end reached from the true start, and of the
    velocity on the training path at PROBE_RATIOS."""
    config = self.config
    schedule = schedule_lib.from_config(config.pyramid)
    latents = step_lib.batch_latents({'video': jnp.asarray(self.clips)}, self.codec)
    levels = flow.downsample_pyramid(latents, schedule.stages)
    noise = flow.noise_pyramid(jax.random.normal(jax.random.key(7), latents.shape),
                               schedule.stages)
    model = nnx.merge(self.graphdef, self.state.params)
    tokens = jnp.asarray(text_lib.tokenize(list(self.captions), config.text.max_length))
    prediction = config.pyramid.prediction
    result = []
    with jax.set_mesh(self.mesh), rules.use_rules(config.rules):
      cond = model.encode_text({'tokens': tokens})
      model_fn = lambda x, t: model.velocity(x, t, cond)  # noqa: E731
      for stage in range(schedule.stages):
        start, end = flow.stage_endpoints(levels, noise, schedule, stage)
        velocity = sampler.stage_velocity(model_fn, False, 1.0, schedule, stage, prediction)
        reached = sampler.euler_stage(velocity, start, schedule, stage, EULER_STEPS)
        row = {'stage': stage,
               'end_error': float(jnp.sum((reached - end) ** 2) / jnp.sum(end ** 2))}
        target = start - end
        for r in PROBE_RATIOS:
          index = int(round((1.0 - r) * schedule.num_train_timesteps))
          t = schedule.stage_timesteps[stage][index]  # the timestep training pairs with r
          v = velocity(r * start + (1.0 - r) * end, t, jnp.float32(r))
          row[f'velocity_error_r{r}'] = float(jnp.sum((v - target) ** 2)
                                              / jnp.sum(target ** 2))
        result.append(row)
    return result


def _define_flags() -> None:
  """Flags are defined only when run as a program, so tests can import the probe beside
  other benchmarks."""
  config_flags.DEFINE_config_file('config', 'configs/moving_digits.py',
                                  'DiT config (and overrides) to probe.')
  flags.DEFINE_integer('clips', 2, 'Training clips to memorise (different digits).')
  flags.DEFINE_integer('copies', 3, 'Copies of each clip per batch.')
  flags.DEFINE_integer('steps', 1200, 'Training steps.')
  flags.DEFINE_integer('reports', 4, 'How many times to sample during training.')
  flags.DEFINE_string('json', 'bench_results/memorisation.json', 'Where to write JSON.')


def main(argv):
  del argv
  args = flags.FLAGS
  clips, captions = distinct_clips(args.config, args.clips)
  probe = Probe(args.config, clips, captions, args.copies, args.steps)
  print(f'clips: {captions}; a black clip\'s error: {np.round(probe.blank[:len(clips)], 4)}')
  rows, start = [], time.time()
  for i in range(1, args.reports + 1):
    loss = probe.train(args.steps * i // args.reports - probe.steps_done)
    errors = probe.sample_errors()
    ratio = errors[np.arange(len(probe.own)), probe.own] / probe.blank
    rows.append({'step': probe.steps_done, 'loss': loss, 'error_over_black': ratio.tolist(),
                 'nearest_is_own': float(np.mean(errors.argmin(1) == probe.own))})
    print(f'step {probe.steps_done:5d} ({time.time() - start:4.0f} s)  loss {loss:.4f}  '
          f'error / black clip {np.round(ratio, 3)}  nearest is own '
          f'{rows[-1]["nearest_is_own"]:.2f}', flush=True)
  stages = probe.stage_errors()
  print(f'{"stage":>5s} {"end error":>10s} ' + ' '.join(f'{"v error r=" + str(r):>12s}'
                                                         for r in PROBE_RATIOS))
  for s in stages:
    print(f'{s["stage"]:5d} {s["end_error"]:10.4f} ' + ' '.join(
        f'{s[f"velocity_error_r{r}"]:12.4f}' for r in PROBE_RATIOS))
  if os.path.dirname(args.json):
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump({'config': probe.config.to_dict(), 'captions': captions, 'samples': rows,
               'stages': stages}, f, indent=1, default=str)
  print(f'wrote {args.json}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
