"""Evaluation report names and the compute each report stands for.

Shared by `python -m pflow_jax.evaluate` (which writes the reports) and
launch/sweep.py (which finds them, to skip finished evaluations).
"""

from __future__ import annotations

import ml_collections

from pflow_jax.training import flops


DEFAULT_NUM_SAMPLES = 256  # evaluate's --num_samples; other counts are named in the report


def report_name(step: int, task: str, num_frames: int | None, steps_per_stage, guidance,
                renoise: bool | None, seed: int, video_guidance: float | None = None,
                num_samples: int = DEFAULT_NUM_SAMPLES, fvd: bool = False,
                scorer_steps: int | None = None, history_noise: float | None = None) -> str:
  """'<step>' plus one part per setting that differs from the config's (and from evaluate's
  default clip count, metrics and scorer), so that evaluations of one checkpoint with other
  settings never overwrite each other."""
  parts = [str(step)]
  if task != 't2v' or num_frames:
    parts.append(f'{task}{num_frames or ""}')
  if steps_per_stage:
    parts.append('steps' + '-'.join(map(str, steps_per_stage)))
  if guidance is not None:
    parts.append(f'cfg{guidance:g}')
  if video_guidance is not None:
    parts.append(f'videocfg{video_guidance:g}')
  if history_noise is not None:
    parts.append(f'histnoise{history_noise:g}')
  if renoise is not None:
    parts.append('renoise' if renoise else 'norenoise')
  if seed:
    parts.append(f'seed{seed}')
  return '_'.join(parts + protocol_parts(num_samples, fvd, scorer_steps))


def protocol_parts(num_samples: int, fvd: bool, scorer_steps: int | None) -> list[str]:
  """The parts of a report name that say how it was measured, where not evaluate's default:
  the clip count, FVD and a short smoke-test scorer."""
  parts = []
  if num_samples != DEFAULT_NUM_SAMPLES:
    parts.append(f'n{num_samples}')
  if fvd:
    parts.append('fvd')
  if scorer_steps is not None:
    parts.append(f'scorer{scorer_steps}')
  return parts


def compute_of(config: ml_collections.ConfigDict, step: int,
               num_frames: int | None = None) -> dict[str, float]:
  """Analytic training FLOPs to `step` and sampling FLOPs per clip (training/flops.py).

  num_frames: the pixel frames of the sampled clips when they differ from the training
  clips' (an autoregressive model generating longer videos).
  """
  sampled = config
  if num_frames is not None and num_frames != config.data.num_frames:
    sampled = config.copy_and_resolve_references()
    sampled.data.num_frames = num_frames
  guided = config.sample.guidance_scale != 1.0
  return {'train_flops': step * flops.train_step_flops(config),
          'sample_flops_per_clip': flops.sample_flops(sampled, config.sample.steps_per_stage,
                                                      1, guided)}
