"""The training loop: resume-or-init, jitted steps, metrics, checkpoints, samples."""

from __future__ import annotations

from collections.abc import Callable
import logging
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import ml_collections
import numpy as np
from tqdm import tqdm

from pflow_jax import checkpoint, config as config_lib, storage
from pflow_jax.data import datasets, latent_dataset, pipeline, video_io
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import flops, metrics as metrics_lib, state as state_lib
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
    logging.warning('signal %d: saving a checkpoint, then exiting', signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _report_config_changes(saved: dict, current: dict) -> None:
  changed = {k for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
  if changed:
    logging.warning('resuming with config sections changed since the checkpoint: %s',
                    sorted(changed))


def write_samples(workdir: str, step: int, videos: np.ndarray, fps: int) -> str:
  """Writes step_XXXXXXX.{mp4,gif,png} under workdir/samples; returns the PNG path."""
  stem = storage.path(workdir) / 'samples' / f'step_{step:07d}'
  with storage.local_file(stem.with_suffix('.png')) as grid:
    video_io.write_frame_grid(grid, videos)
  strip = np.concatenate(list(videos), axis=2)  # samples side by side
  for suffix in ('.mp4', '.gif'):
    with storage.local_file(stem.with_suffix(suffix)) as name:
      video_io.write_video(name, strip, fps=fps)
  return str(stem.with_suffix('.png'))


def restore_or_init(ckpt: checkpoint.Checkpointer, workdir: str, config: ml_collections.ConfigDict,
                    abstract: Any, shardings: Any, init_fn: Callable[[], Any],
                    iterator: pipeline.BatchIterator) -> Any:
  """The latest checkpoint restored into `shardings` (iterator position too), or a fresh state.

  A fresh start writes the resolved config to workdir/config.json (atomically) and,
  with config.train.init_from, starts from that workdir's EMA weights.
  A config.json of a different config in a workdir without checkpoints belongs
  to another run: FileExistsError, nothing is overwritten.
  """
  current = checkpoint.config_json(config)
  latest = ckpt.latest_step()
  if latest is None:
    checkpoint.write_config_json(workdir, current)
    state = init_fn()
    if config.train.init_from:
      state = _init_from(config.train.init_from, state, abstract, shardings)
    return state
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  state, data_state, saved = ckpt.restore(latest, target)
  iterator.set_state(data_state)
  _report_config_changes(saved, current)
  logging.info('resumed from step %d in %s', latest, ckpt.directory)
  return state


def _init_from(source: str, state: Any, abstract: Any, shardings: Any) -> Any:
  """`state` with its parameters and EMA replaced by the EMA weights of workdir `source`
  (a converted release or another run; any mesh), the optimizer fresh at step 0."""
  params, step = checkpoint.restore_ema_params(source, abstract.ema_params,
                                               shardings.ema_params)
  logging.info('initialised from the EMA weights of %s (step %d)', source, step)
  return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))


@jax.jit
def _accumulate(window_sum: dict, all_finite: jax.Array, metrics: dict) -> tuple[dict, jax.Array]:
  """Adds a step's metrics to the window's sums and folds their finiteness into a flag."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
  return jax.tree.map(jnp.add, window_sum, metrics), all_finite & finite


@jax.jit
def _tree_finite(tree: Any) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _stop_agreed(requested: bool, at_log_step: bool) -> bool:
  """Whether to save and stop after this step. One process stops as soon as it is asked.
  Several agree first, at log steps (where the loop waits for the devices anyway): a
  SIGTERM to any of them stops all at the same step, each saving its shards of one
  checkpoint, instead of one saving while the others train on."""
  if jax.process_count() == 1:
    return requested
  if not at_log_step:
    return False
  return bool(multihost_utils.process_allgather(np.int32(requested)).any())


def run_loop(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, state: Any,
             iterator: pipeline.BatchIterator, ckpt: checkpoint.Checkpointer,
             train_step: Callable[[Any, dict, int], tuple[Any, dict]],
             on_sample: Callable[[Any, int], dict[str, float] | None],
             step_flops: float = 0.0, step_tokens: int = 0,
             peak_tflops: float | None = None) -> dict[str, float]:
  """Steps from state.step to config.train.num_steps: logs, checkpoints, samples, SIGTERM.

  train_step(state, global_batch, step) -> (state, metrics); on_sample(state, step)
  writes samples or evaluations every config.train.sample_every steps and at the end,
  and may return scalars to log at that step.
  SIGTERM/SIGINT save a checkpoint and exit (143): after this step, or with several
  processes at the next log step, all of them together (_stop_agreed).
  Logged metrics are the means over the steps since the last log, plus steps/s and,
  given step_flops / step_tokens / peak_tflops (per device), TFLOP/s, tokens/s and the
  model FLOP utilisation of the mesh (mfu). Every step's
  metrics are checked for NaN/Inf on device, so steps still run asynchronously;
  the first log or checkpoint after a non-finite step raises FloatingPointError,
  and no checkpoint is written from a state with non-finite values. The
  checkpointer and metric files are closed on every exit.
  """
  train = config.train
  writer = metrics_lib.MetricWriter(workdir)
  start = int(jax.device_get(state.step))
  num_steps = train.num_steps
  last: dict[str, float] = {}
  bar = tqdm(total=num_steps, initial=start, desc='train', unit='step',
             disable=jax.process_index() != 0, dynamic_ncols=True)
  window_start, window_steps, window_sum = time.perf_counter(), 0, None
  all_finite = jnp.asarray(True)

  def check_finite(done: int, what: str) -> None:
    if not bool(jax.device_get(all_finite)):
      raise FloatingPointError(f'a non-finite loss or metric appeared at or before step {done} '
                               f'(not {what}); the last checkpoint is step '
                               f'{ckpt.latest_step()}')

  try:
    with _StopRequest() as stop, jax.set_mesh(mesh):
      logging.info('process %d: training steps %d to %d', jax.process_index(), start + 1,
                   num_steps)
      for step in range(start, num_steps):
        global_batch = pipeline.to_global_batch(next(iterator), mesh, config.rules)
        state, metrics = train_step(state, global_batch, step)
        if window_sum is None:
          window_sum = jax.tree.map(jnp.zeros_like, metrics)
        window_sum, all_finite = _accumulate(window_sum, all_finite, metrics)
        window_steps += 1
        done = step + 1
        if done % train.log_every == 0 or done == num_steps:
          check_finite(done, 'logged')
          means = {k: float(v) / window_steps for k, v in jax.device_get(window_sum).items()}
          means['steps_per_sec'] = window_steps / (time.perf_counter() - window_start)
          if step_flops:
            means['tflops_per_sec'] = step_flops * means['steps_per_sec'] / 1e12
            if peak_tflops:  # model FLOP utilisation of all devices of the mesh
              means['mfu'] = means['tflops_per_sec'] / (peak_tflops * mesh.devices.size)
          if step_tokens:
            means['tokens_per_sec'] = step_tokens * means['steps_per_sec']
          writer.scalars(done, means)
          bar.set_postfix(loss=f'{means["loss"]:.4f}', steps_s=f'{means["steps_per_sec"]:.2f}')
          last = means
          window_start, window_steps, window_sum = time.perf_counter(), 0, None
        bar.update(1)
        stopping = _stop_agreed(stop.requested, done % train.log_every == 0)
        if done % train.checkpoint_every == 0 or done == num_steps or stopping:
          check_finite(done, 'checkpointed')
          if not bool(jax.device_get(_tree_finite(state))):
            raise FloatingPointError(f'the state at step {done} holds NaN/Inf: not '
                                     f'checkpointed; the last checkpoint is step '
                                     f'{ckpt.latest_step()}')
          ckpt.save(done, state, iterator.get_state(), checkpoint.config_json(config))
        if done % train.sample_every == 0 or done == num_steps:
          evaluation = on_sample(state, done)
          if evaluation:
            writer.scalars(done, evaluation)
            last = {**last, **evaluation}
          window_start = time.perf_counter()  # sampling time is not training time
        if stopping:
          logging.warning('stopped at step %d; rerun the same command to resume', done)
          raise SystemExit(143)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return last


# make_sampler(config, graphdef, codec) -> sample(params, rng) -> uint8 videos, or None
# when the config has nothing to sample (inference.training_sampler).
SamplerFactory = Callable[[ml_collections.ConfigDict, Any, Any],
                          Callable[[Any, jax.Array], np.ndarray] | None]


def train(config: ml_collections.ConfigDict, workdir: str,
          make_sampler: SamplerFactory | None = None) -> dict[str, float]:
  """Trains (or resumes) the DiT in `workdir`; returns the last logged metrics.

  make_sampler builds the sampler of the videos written every
  config.train.sample_every steps (none without it); the launcher passes
  inference.training_sampler, which lives above training/.
  """
  config_lib.validate(config)
  storage.path(workdir).mkdir(parents=True, exist_ok=True)
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  logging.info('mesh %s over %d devices (%d processes)', dict(mesh.shape), mesh.size,
               jax.process_count())
  mesh_lib.check_global_batch(config.data.global_batch_size, mesh)
  codec = latent_codec.make_codec(config.latent)
  if config.data.name == 'latents':
    latent_dataset.check_compatible(config.data.latent_dir,
                                    (*config_lib.latent_size(config), codec.latent_channels),
                                    latent_codec.normalisation(codec))
  source = datasets.train_source(config)
  iterator = pipeline.make_iterator(
      source, global_batch_size=config.data.global_batch_size, seed=config.seed,
      transform=datasets.train_transform(config), num_threads=config.data.num_threads)

  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  state = restore_or_init(ckpt, workdir, config, abstract, shardings,
                          lambda: state_lib.init_state(config, mesh, tx, shardings), iterator)

  example = iterator.peek()
  jitted = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, tx),
                                   mesh, config, shardings, example, codec)
  sample = make_sampler(config, graphdef, codec) if make_sampler else None

  def on_sample(state, step):
    if sample is None:
      return
    videos = sample(state.ema_params, jax.random.key(config.seed + 1))
    if jax.process_index() == 0:
      logging.info('step %d: samples in %s', step, write_samples(workdir, step, videos,
                                                                 config.sample.fps))

  return run_loop(config, workdir, mesh, state, iterator, ckpt, jitted, on_sample,
                  flops.train_step_flops(config), flops.train_step_tokens(config),
                  flops.peak_tflops(jax.devices()[0].device_kind,
                                    config.train.peak_tflops_per_device))
