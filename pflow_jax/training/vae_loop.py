"""VAE training loop and evaluation (a trained VAE is loaded by models/vae_load.py).

Same conventions as the DiT trainer (training/loop.py): resume-or-init from
`workdir/checkpoints`, config JSON, data-iterator state, SIGTERM saves. Every
`train.sample_every` steps (and at the end) the EMA weights reconstruct the
first `train.eval_examples` held-out videos: their PSNR is logged as
`eval_psnr` and a grid (input above reconstruction) is written to
`workdir/samples/`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from pflow_jax import checkpoint, config as config_lib, storage
from pflow_jax.data import datasets, pipeline
from pflow_jax.models import vae as vae_lib, vae_load
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import loop, step as step_lib, vae_step


def _video_only(record: dict[str, Any]) -> dict[str, np.ndarray]:
  return {'video': np.asarray(record['video'])}



def evaluate(reconstruct, params, source, num_examples: int,
             batch_size: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """Held-out metrics over the first num_examples of source, first inputs, their reconstructions.

  Metrics: 'eval_psnr' (mean over clips), 'eval_psnr_stderr' (its standard
  error), 'eval_clips' (how many), 'eval_psnr_frame<t>' (mean over clips of frame t's PSNR: a causal
  VAE's frames differ by their place in a latent chunk), 'eval_ssim' (mean SSIM over
  clips and frames),
  'eval_informative_channels' (latent channels whose posterior mean varies over
  the data more than the posterior noise variance: signal-to-noise above 1; a
  channel that KL collapsed to the prior is noise to the decoder, however much
  its mean moves) and the latent statistics the DiT normalises with (mean and
  std of the first latent frame and of the others).
  """
  num_examples = min(num_examples, len(source))
  psnrs, frame_psnrs, ssims, moments, channels, first = [], [], [], 0.0, 0.0, None
  for start in range(0, num_examples, batch_size):
    video = np.stack([source[i]['video'] for i in range(start, min(start + batch_size,
                                                                   num_examples))])
    x_hat, psnr, frame_psnr, frame_ssim, m, cm = reconstruct(params, video)
    psnrs.append(np.asarray(psnr))
    frame_psnrs.append(np.asarray(frame_psnr))
    ssims.append(np.asarray(frame_ssim))
    moments = moments + np.asarray(m, np.float64)
    channels = channels + np.asarray(cm, np.float64)
    if first is None:
      first = (video, np.asarray(jax.device_get(x_hat)))
  _, signal_variance = vae_lib.mean_variance(channels[:3])
  count, noise = channels[0], channels[3]
  psnrs = np.concatenate(psnrs)
  metrics = {'eval_psnr': float(psnrs.mean()),
             # Clips differ by several dB, so the mean's sampling error matters.
             'eval_psnr_stderr': float(psnrs.std(ddof=1) / np.sqrt(len(psnrs))
                                       if len(psnrs) > 1 else np.nan),
             'eval_clips': len(psnrs),
             'eval_ssim': float(np.concatenate(ssims).mean()),
             'eval_informative_channels': int((signal_variance > noise / count).sum())}
  for t, value in enumerate(np.concatenate(frame_psnrs).mean(axis=0)):
    metrics[f'eval_psnr_frame{t}'] = float(value)
  for name, (mean, std) in vae_lib.latent_group_stats(moments).items():
    metrics[f'{name}_mean'] = mean
    metrics[f'{name}_std'] = max(std, 1e-6)
  return metrics, first[0], first[1]


def write_latent_stats(workdir: str, step: int, metrics: Mapping[str, float]) -> None:
  """Saves the latent normalisation measured at `step` (used by `load_vae`)."""
  stats = {'step': step}
  for name in vae_lib.LATENT_GROUPS:
    if f'{name}_mean' in metrics:
      stats[f'{name}_shift'] = metrics[f'{name}_mean']
      stats[f'{name}_scale'] = 1.0 / metrics[f'{name}_std']
  storage.write_text_atomic(storage.path(workdir) / vae_load.STATS_FILE,
                            json.dumps(stats, indent=2))


def step_variant(config: ml_collections.ConfigDict, step: int) -> tuple[bool, bool]:
  """(adversarial, whole_frames) of the step after `step` completed ones: the PatchGAN
  from loss.disc_start on (never if < 0), whole frames for the last train.whole_frame_steps
  (with train.crop_size 0 every step already is one, so no second step is compiled)."""
  adversarial = 0 <= config.loss.disc_start <= step
  whole = config.train.num_steps - step <= config.train.whole_frame_steps
  return adversarial, whole and config.train.crop_size > 0


def train_vae(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the VAE in `workdir`; returns the last logged metrics."""
  config_lib.validate_vae(config)
  storage.path(workdir).mkdir(parents=True, exist_ok=True)
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  mesh_lib.check_global_batch(config.data.global_batch_size, mesh)
  iterator = pipeline.make_iterator(
      datasets.source(config, 'train'), global_batch_size=config.data.global_batch_size,
      seed=config.seed, transform=_video_only, num_threads=config.data.num_threads)
  test_source = datasets.source(config, 'test')

  tx, disc_tx = vae_step.make_optimizers(config)
  vae_gd, disc_gd, abstract, shardings = vae_step.state_shardings(config, mesh, tx, disc_tx)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  state = loop.restore_or_init(
      ckpt, workdir, config, abstract, shardings,
      lambda: vae_step.init_state(config, mesh, tx, disc_tx, shardings), iterator)

  step_fn = vae_step.make_train_step(config, vae_gd, disc_gd, tx, disc_tx)
  batch_sh = {'video': step_lib.batch_sharding(mesh, config, 5)}
  replicated = NamedSharding(mesh, P())
  jitted = {(adv, whole): jax.jit(functools.partial(step_fn, adversarial=adv, whole_frames=whole),
                                 in_shardings=(shardings, batch_sh),
                                 out_shardings=(shardings, replicated), donate_argnums=(0,))
            for adv in (False, True) for whole in (False, True)}  # compiled on first use only

  def train_step(state, batch, step):
    return jitted[step_variant(config, step)](state, batch)

  reconstruct = vae_step.make_reconstruct_fn(config, vae_gd)

  def on_sample(state, step):
    metrics, video, x_hat = evaluate(reconstruct, state.ema_params, test_source,
                                     config.train.eval_examples, config.data.global_batch_size)
    if jax.process_index() == 0:
      write_latent_stats(workdir, step, metrics)
      pairs = np.stack([video, pipeline.video_to_uint8(np.asarray(x_hat))],
                       axis=1).reshape((-1,) + video.shape[1:])
      grid = loop.write_samples(workdir, step, pairs[:8], config.train.fps)
      logging.info('step %d: %s of %d; reconstructions (input above output) in %s', step,
                   eval_summary(metrics), config.vae.latent_channels, grid)
    return metrics

  return loop.run_loop(config, workdir, mesh, state, iterator, ckpt, train_step, on_sample)


def eval_summary(metrics: dict[str, float]) -> str:
  """One line of `evaluate`'s metrics: PSNR with its standard error, per frame, channels."""
  frames = sorted((int(k.removeprefix('eval_psnr_frame')), v) for k, v in metrics.items()
                  if k.startswith('eval_psnr_frame'))
  per_frame = ' / '.join(f'{v:.2f}' for _, v in frames)
  return (f"held-out PSNR {metrics['eval_psnr']:.2f} +- {metrics['eval_psnr_stderr']:.2f} dB "
          f"over {metrics['eval_clips']} clips (per frame {per_frame}), "
          f"{metrics['eval_informative_channels']} informative latent channels")


def evaluate_workdir(workdir: str, num_examples: int,
                     step: int | None = None) -> dict[str, float]:
  """`evaluate`'s metrics (and 'step') of a workdir's latest (or given) checkpoint, EMA
  weights, on the first num_examples clips of its config's test split."""
  config = checkpoint.load_workdir_config(workdir, step)
  _, vae_gd, params, step = vae_load.load_vae(workdir, step)
  metrics, _, _ = evaluate(vae_step.make_reconstruct_fn(config, vae_gd), params,
                           datasets.source(config, 'test'), num_examples,
                           config.data.global_batch_size)
  return {'step': step, **metrics}
