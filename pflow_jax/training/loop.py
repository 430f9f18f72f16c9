"""The training loop: resume-or-init, jitted steps, metrics, checkpoints, samples."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from pflow_jax import config as config_lib
from pflow_jax import inference
from pflow_jax.data import datasets, pipeline, video_io
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import checkpoint, flops, metrics as metrics_lib, state as state_lib
from pflow_jax.training import step as step_lib


class _StopRequest:
  """Turns SIGTERM/SIGINT into 'save a checkpoint after this step, then exit'."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('signal %d: saving a checkpoint after this step, then exiting', signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _report_config_changes(saved: dict, current: dict) -> None:
  changed = {k for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
  if changed:
    logging.warning('resuming with config sections changed since the checkpoint: %s',
                    sorted(changed))


def write_samples(workdir: str, step: int, videos: np.ndarray, fps: int) -> str:
  """Writes step_XXXXXXX.{mp4,gif,png} under workdir/samples; returns the PNG path."""
  out = os.path.join(workdir, 'samples')
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, f'step_{step:07d}')
  grid = stem + '.png'
  video_io.write_frame_grid(grid, videos)
  strip = np.concatenate(list(videos), axis=2)  # samples side by side
  video_io.write_video(stem + '.mp4', strip, fps=fps)
  video_io.write_video(stem + '.gif', strip, fps=fps)
  return grid


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) in `workdir`; returns the last logged metrics."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  logging.info('mesh %s over %d devices (%d processes)', dict(mesh.shape), mesh.size,
               jax.process_count())
  codec = latent_codec.make_codec(config.latent)
  source = datasets.train_source(config)
  iterator = pipeline.make_iterator(
      source, global_batch_size=config.data.global_batch_size, seed=config.seed,
      transform=datasets.train_transform(config), num_threads=config.data.num_threads)

  tx = state_lib.make_optimizer(config.optim)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  current_cfg = config_json(config)
  latest = ckpt.latest_step()
  if latest is None:
    state = state_lib.init_state(config, mesh, tx, shardings)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(current_cfg, f, indent=2)
  else:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    state, data_state, saved_cfg = ckpt.restore(latest, target)
    iterator.set_state(data_state)
    _report_config_changes(saved_cfg, current_cfg)
    logging.info('resumed from step %d in %s', latest, ckpt.directory)
  start = int(jax.device_get(state.step))

  first = next(iterator)
  train_step = step_lib.jit_train_step(
      step_lib.make_train_step(config, graphdef, codec, tx), mesh, config, shardings, first)
  generate = inference.make_generate_fn(
      config, graphdef, codec, num_samples=len(config.sample.prompts),
      steps_per_stage=config.sample.steps_per_stage,
      guidance_scale=config.sample.guidance_scale)
  prompt_tokens = inference.tokenize_prompts(config, config.sample.prompts)
  writer = metrics_lib.MetricWriter(workdir)
  step_flops = flops.train_step_flops(config)

  last: dict[str, float] = {}
  num_steps = config.train.num_steps
  bar = tqdm(total=num_steps, initial=start, desc='train', unit='step',
             disable=jax.process_index() != 0, dynamic_ncols=True)
  window_start, window_steps = time.perf_counter(), 0
  batch = first
  with _StopRequest() as stop, jax.set_mesh(mesh):
    for step in range(start, num_steps):
      global_batch = pipeline.to_global_batch(batch, mesh, config.rules)
      state, metrics = train_step(state, global_batch)
      window_steps += 1
      done = step + 1
      if done % config.train.log_every == 0 or done == num_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(metrics['loss']):
          raise FloatingPointError(f'loss is {metrics["loss"]} at step {done}; the last '
                                   f'checkpoint is step {ckpt.latest_step()}')
        elapsed = time.perf_counter() - window_start
        metrics['steps_per_sec'] = window_steps / elapsed
        metrics['tflops_per_sec'] = step_flops * metrics['steps_per_sec'] / 1e12
        writer.scalars(done, metrics)
        bar.set_postfix(loss=f'{metrics["loss"]:.4f}', steps_s=f'{metrics["steps_per_sec"]:.2f}')
        last = metrics
        window_start, window_steps = time.perf_counter(), 0
      bar.update(1)
      if done % config.train.checkpoint_every == 0 or done == num_steps or stop.requested:
        ckpt.save(done, state, iterator.get_state(), current_cfg)
      if done % config.train.sample_every == 0 or done == num_steps:
        videos = inference.to_uint8(generate(state.ema_params, prompt_tokens,
                                             jax.random.key(config.seed + 1)))
        if jax.process_index() == 0:
          grid = write_samples(workdir, done, videos, config.sample.fps)
          logging.info('step %d: samples in %s', done, grid)
      if stop.requested:
        ckpt.close()
        bar.close()
        logging.warning('stopped at step %d; rerun the same command to resume', done)
        raise SystemExit(143)
      if done < num_steps:
        batch = next(iterator)
  bar.close()
  ckpt.close()
  writer.close()
  return last
