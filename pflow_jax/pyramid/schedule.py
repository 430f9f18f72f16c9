"""Pyramid stage schedule: sigma windows, timestep tables and stage-jump coefficients.

Follows the official PyramidFlowMatchEulerDiscreteScheduler
(diffusion_schedulers/scheduling_flow_matching.py). Sigma 1 is pure noise, 0 is
data. Stage k covers the global sigma window [end_sigmas[k], start_sigmas[k]];
points on it are `r * start + (1 - r) * end` with the stage-local ratio r
running 1 -> 0. The model sees timesteps on a global 0..N scale, where each
stage owns a share of the axis proportional to its flow length.

Everything here is host-side numpy, computed once; the schedule is a static
argument of the jitted loss and sampler (hashed by identity).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import numpy as np

# Block noise is N(0, (1 + gamma) I_4 - gamma 1 1^T): positive semi-definite
# only for gamma <= 1/3 (its eigenvalue along 1 is 1 - 3 gamma).
MAX_GAMMA = 1.0 / 3.0


@dataclasses.dataclass(frozen=True, eq=False)
class PyramidSchedule:
  """Per-stage windows and tables; stages are ordered low -> high resolution.

  Attributes:
    num_train_timesteps: N, the length of the global discretisation.
    stages: K, the number of pyramid stages.
    gamma: block-noise correlation strength of the stage jump.
    shift: SD3-style timestep shift applied to the global sigmas.
    sigmas: [N] float32 global sigmas, 1 -> 1/N (shifted).
    timesteps: [N] float32, sigmas * N.
    start_sigmas: [K] noise level at each stage's start, corrected for the jump.
    end_sigmas: [K] noise level at each stage's end (0 for the last stage).
    ori_start_sigmas: [K] uncorrected start sigmas (what the jump renoises to).
    timestep_ratios: [K, 2] each stage's (start, end) share of the timestep axis.
    stage_timesteps: [K, N] float32 training timesteps per stage (global scale).
    stage_ratios: [K, N] float32 stage-local ratios r, 1 -> 1/N.
  """
  num_train_timesteps: int
  stages: int
  gamma: float
  shift: float
  sigmas: np.ndarray
  timesteps: np.ndarray
  start_sigmas: np.ndarray
  end_sigmas: np.ndarray
  ori_start_sigmas: np.ndarray
  timestep_ratios: np.ndarray
  stage_timesteps: np.ndarray
  stage_ratios: np.ndarray


def _validate(stages: int, stage_range: Sequence[float], gamma: float, shift: float,
              num_train_timesteps: int) -> None:
  if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
    raise ValueError(f'num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}')
  if not 0.0 < gamma <= MAX_GAMMA + 1e-12:
    raise ValueError(f'gamma must be in (0, 1/3] so that the block-noise covariance '
                     f'(1 + gamma) I - gamma 11^T is positive semi-definite, got {gamma!r}')
  if not shift > 0.0:
    raise ValueError(f'shift must be positive, got {shift!r}')
  if len(stage_range) != stages + 1:
    raise ValueError(f'stage_range {list(stage_range)} must have stages + 1 = {stages + 1} '
                     f'entries (one boundary per stage edge)')
  if stage_range[0] != 0 or stage_range[-1] != 1:
    raise ValueError(f'stage_range {list(stage_range)} must start at 0 (pure noise) and end '
                     f'at 1 (clean data)')
  if any(b <= a for a, b in zip(stage_range[:-1], stage_range[1:])):
    raise ValueError(f'stage_range {list(stage_range)} must be strictly increasing')
  indices = [int(v * num_train_timesteps) for v in stage_range]
  if any(b <= a for a, b in zip(indices[:-1], indices[1:])):
    raise ValueError(f'stage_range {list(stage_range)} gives an empty stage on a grid of '
                     f'{num_train_timesteps} timesteps (indices {indices})')


def make_schedule(stages: int = 3, stage_range: Sequence[float] | None = None,
                  gamma: float = 1 / 3, shift: float = 1.0,
                  num_train_timesteps: int = 1000) -> PyramidSchedule:
  """The official schedule; stage_range None means K equal windows [0, 1/K, ..., 1].

  stages=1 gives plain full-resolution rectified flow (start sigma 1, end 0).
  """
  if isinstance(stages, bool) or int(stages) != stages or stages < 1:
    raise ValueError(f'stages must be a positive integer, got {stages!r}')
  if stage_range is None:
    stage_range = [i / stages for i in range(stages + 1)]
  stage_range = [float(v) for v in stage_range]
  _validate(stages, stage_range, gamma, shift, num_train_timesteps)
  n = int(num_train_timesteps)

  # Global sigmas in float32, as the official torch code computes them.
  sigmas = np.linspace(1, n, n, dtype=np.float32)[::-1] / np.float32(n)
  shift32 = np.float32(shift)
  sigmas = (shift32 * sigmas / (np.float32(1) + (shift32 - np.float32(1)) * sigmas))
  sigmas = sigmas.astype(np.float32)
  timesteps = (sigmas * np.float32(n)).astype(np.float32)

  starts, ends, ori_starts = [], [], []
  for k in range(stages):
    start_index = int(stage_range[k] * n)
    end_index = min(int(stage_range[k + 1] * n), n)
    start = float(sigmas[start_index])
    end = float(sigmas[end_index]) if end_index < n else 0.0
    ori_starts.append(start)
    if k > 0:
      # The jump from stage k-1 leaves signal o; after the corrective noise the
      # signal coefficient is o * alpha (see jump_coefficients).
      o = 1.0 - start
      start = 1.0 - o / (math.sqrt(1.0 + 1.0 / gamma) * (1.0 - o) + o)
    starts.append(start)
    ends.append(end)
  starts, ends = np.array(starts), np.array(ends)

  # Timestep-axis share of each stage, proportional to its flow length.
  lengths = starts - ends
  total = lengths.sum()
  ratios = np.zeros((stages, 2))
  for k in range(stages):
    ratios[k, 0] = 0.0 if k == 0 else lengths[:k].sum() / total
    ratios[k, 1] = 1.0 if k == stages - 1 else lengths[:k + 1].sum() / total

  stage_timesteps = np.zeros((stages, n), np.float32)
  for k in range(stages):
    t_max = float(timesteps[int(ratios[k, 0] * n)])
    t_min = float(timesteps[min(int(ratios[k, 1] * n), n - 1)])
    stage_timesteps[k] = np.linspace(t_max, t_min, n + 1)[:-1]
  stage_ratios = np.tile(_local_ratios(n).astype(np.float32), (stages, 1))

  arrays = dict(sigmas=sigmas, timesteps=timesteps, start_sigmas=starts, end_sigmas=ends,
                ori_start_sigmas=np.array(ori_starts), timestep_ratios=ratios,
                stage_timesteps=stage_timesteps, stage_ratios=stage_ratios)
  for a in arrays.values():
    a.setflags(write=False)
  return PyramidSchedule(num_train_timesteps=n, stages=int(stages), gamma=float(gamma),
                         shift=float(shift), **arrays)


def from_config(pyramid: Mapping[str, Any]) -> PyramidSchedule:
  """make_schedule from a config's `pyramid` section (the one way every caller builds it)."""
  return make_schedule(stages=pyramid['stages'], stage_range=pyramid['stage_range'],
                       gamma=pyramid['gamma'], shift=pyramid['shift'],
                       num_train_timesteps=pyramid['num_train_timesteps'])


def _local_ratios(n: int) -> np.ndarray:
  """Stage-local ratios 1 -> 1/N (float64), shared by every stage."""
  return np.linspace(1.0, 0.0, n + 1)[:-1]


def _check_stage(schedule: PyramidSchedule, stage: int, low: int = 0) -> None:
  if not low <= stage < schedule.stages:
    raise ValueError(f'stage must be in [{low}, {schedule.stages - 1}] for a '
                     f'{schedule.stages}-stage schedule, got {stage}')


def inference_schedule(schedule: PyramidSchedule, stage: int,
                       num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(timesteps [n], ratios [n + 1]) of one stage, as the official set_timesteps.

  Timesteps run linearly over the stage's training table; ratios run 1 -> 1/N
  with a final 0, so Euler step j moves r from ratios[j] to ratios[j + 1].
  """
  _check_stage(schedule, stage)
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f'num_steps must be a positive integer, got {num_steps!r}')
  table = schedule.stage_timesteps[stage]
  timesteps = np.linspace(float(table[0]), float(table[-1]), num_steps)
  local = _local_ratios(schedule.num_train_timesteps)
  ratios = np.append(np.linspace(local[0], local[-1], num_steps), 0.0)
  return timesteps.astype(np.float32), ratios.astype(np.float32)


def jump_coefficients(schedule: PyramidSchedule, next_stage: int) -> tuple[float, float]:
  """(alpha, beta) of the jump `alpha * up(x) + beta * block_noise` into next_stage.

  The previous stage ends at noise level ori_start_sigma (signal o = 1 - that).
  alpha and beta make the jumped point match the training start of next_stage:
  signal 1 - start_sigma, per-pixel noise variance start_sigma^2, and no
  within-block noise correlation (the block noise cancels the copy that nearest
  upsampling makes of each low-resolution noise pixel).
  """
  _check_stage(schedule, next_stage, low=1)
  o = 1.0 - float(schedule.ori_start_sigmas[next_stage])
  alpha = 1.0 / (math.sqrt(1.0 + 1.0 / schedule.gamma) * (1.0 - o) + o)
  beta = alpha * (1.0 - o) / math.sqrt(schedule.gamma)
  return alpha, beta
