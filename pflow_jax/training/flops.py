"""Analytic FLOP counts of the DiT (matmuls and attention; elementwise ops ignored), and
the peak rates that model FLOP utilisation (MFU) divides by.

Training FLOPs are 3x the forward (the maxtext/maxdiffusion MFU definition).
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from pflow_jax import config as config_lib
from pflow_jax.training import step as step_lib


def dit_forward_flops(model: ml_collections.ConfigDict, video_tokens: int,
                      text_tokens: int, mlp_ratio: int = 4) -> float:
  """Forward FLOPs of one sample through the DiT (either family).

  Per block and token: qkv (3), attention output (1) and MLP (2 x mlp_ratio)
  projections of D x D, i.e. 2 * (4 + 2 * mlp_ratio) * D^2 FLOPs; SD3's last
  block's text stream only projects qkv. A FLUX single-stream block costs the
  same per token (qkv 3, MLP in mlp_ratio, proj_out 1 + mlp_ratio) over text and
  video alike. Joint attention over L = video + text tokens costs 2 * 2 * L^2 * D
  (scores and weighted sum) in every block.
  """
  d = model.num_attention_heads * model.attention_head_dim
  per_token = 2 * (4 + 2 * mlp_ratio) * d * d
  layers = model.num_layers
  single = model.get('num_single_layers', 0)
  blocks = (layers + single) * video_tokens * per_token
  if model.get('family', 'sd3') == 'flux':
    blocks += (layers + single) * text_tokens * per_token
  else:
    blocks += (layers - 1) * text_tokens * per_token + text_tokens * 2 * 3 * d * d
  attention = (layers + single) * 4 * (video_tokens + text_tokens) ** 2 * d
  patch = model.patch_size ** 2 * model.in_channels
  io = 2 * video_tokens * patch * d * 2 + 2 * text_tokens * model.joint_attention_dim * d
  return float(blocks + attention + io)


# Dense bf16 peak TFLOP/s per chip, matched against jax's device_kind (first match wins).
# Vendor figures without sparsity; PCIe and other variants differ: override with
# train.peak_tflops_per_device.
PEAK_TFLOPS = (('H200', 989.0), ('H100', 989.0), ('B200', 2250.0), ('A100', 312.0),
               ('L40S', 362.0), ('TPU v6', 918.0), ('TPU v5p', 459.0), ('TPU v5 lite', 197.0),
               ('TPU v5e', 197.0), ('TPU v4', 275.0))


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
  """Peak TFLOP/s of one device: the override if positive, else the table's entry for
  device_kind, else None (unknown, e.g. CPUs: no MFU is logged)."""
  if override > 0:
    return float(override)
  for name, tflops in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def train_step_tokens(config: ml_collections.ConfigDict) -> int:
  """Video tokens one training step processes (global batch, stages mixed per column)."""
  ratios = list(config.pyramid.sample_ratios)
  per_column = config.data.global_batch_size // sum(ratios)
  return sum(per_column * r * t for r, t in zip(ratios, train_video_tokens(config)))


def dit_text_tokens(config: ml_collections.ConfigDict) -> int:
  """Text tokens the DiT sees per sample (the toy encoder pools `pool` bytes per token)."""
  pool = config.text.pool if config.text.encoder == 'toy' else 1
  return config.text.max_length // pool


def stage_video_tokens(config: ml_collections.ConfigDict) -> list[int]:
  """Video tokens per sample at each pyramid stage, low -> high resolution."""
  t, h, w = config_lib.latent_size(config)
  p = config.model.patch_size
  k = config.pyramid.stages
  return [t * (h // 2 ** (k - 1 - s) // p) * (w // 2 ** (k - 1 - s) // p) for s in range(k)]


def train_video_tokens(config: ml_collections.ConfigDict) -> list[int]:
  """Video tokens per training sample at each stage, low -> high resolution.

  Joint training sees the whole clip. Autoregressive training sees one target
  frame and its history laid out by the stage's plan: compressed (or full
  resolution with temporal.compress_history False), padded to the plan's fixed
  length, which is what the compiled step computes whatever the step's history.
  """
  if not config.temporal.autoregressive:
    return stage_video_tokens(config)
  frames = config_lib.latent_size(config)[0]
  return [tokens // frames + plan.length
          for tokens, plan in zip(stage_video_tokens(config), step_lib.training_plans(config))]


def train_step_flops(config: ml_collections.ConfigDict) -> float:
  """FLOPs of one training step (global batch, 3x forward), stages mixed per column."""
  ratios = list(config.pyramid.sample_ratios)
  per_column = config.data.global_batch_size // sum(ratios)
  text = dit_text_tokens(config)
  return sum(3 * per_column * r * dit_forward_flops(config.model, tokens, text)
             for r, tokens in zip(ratios, train_video_tokens(config)))


def sample_flops(config: ml_collections.ConfigDict, steps_per_stage: Sequence[int],
                 num_samples: int, guidance: bool = True) -> float:
  """FLOPs of sampling `num_samples` videos (CFG doubles the batch).

  Autoregressive models generate frame by frame: the first frame with steps_per_stage
  and `guidance`, later ones with sample.video_steps_per_stage (guided unless
  video_guidance_scale is 1), each step on the frame and its history padded to the
  window, as the compiled programs run it. Counted without the history cache, which
  computes the history's keys and values once per stage rather than at every step.
  """
  text = dit_text_tokens(config)
  if not config.temporal.autoregressive:
    batch = num_samples * (2 if guidance else 1)
    return sum(batch * n * dit_forward_flops(config.model, tokens, text)
               for n, tokens in zip(steps_per_stage, stage_video_tokens(config)))
  frames = config_lib.latent_size(config)[0]
  frame_tokens = [tokens // frames for tokens in stage_video_tokens(config)]
  window = config_lib.history_window(config, frames)
  history = ([plan.length for plan in step_lib.history_plans(config, window)] if window
             else [0] * len(frame_tokens))
  later_guided = config.sample.video_guidance_scale != 1.0
  total = sum((2 if guidance else 1) * n * dit_forward_flops(config.model, tokens, text)
              for n, tokens in zip(steps_per_stage, frame_tokens))
  total += (frames - 1) * sum(
      (2 if later_guided else 1) * n * dit_forward_flops(config.model, tokens + extra, text)
      for n, tokens, extra in zip(config.sample.video_steps_per_stage, frame_tokens, history))
  return num_samples * total
