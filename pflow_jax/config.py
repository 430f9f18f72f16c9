"""The config schema shared by every experiment, and its validation.

Experiment files in `configs/` start from `base_config()` and override fields;
launchers call `validate(config)` once, so every derived quantity and every
error about an inconsistent config lives here.
"""

from __future__ import annotations

import ml_collections

# Logical axis -> mesh axes for the DiT (see pflow_jax/parallel/rules.py).
# Batch over data and fsdp (FSDP shards parameters along 'embed' and is
# data-parallel for activations); heads and MLP over tensor; tokens over
# sequence.
DIT_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', 'sequence'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv', None),
    ('vocab', None),
)


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the official pyramid schedule and optimiser on a tiny DiT."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name='moving_digits',
      data_dir='data',             # relative paths are taken from the cwd
      build_if_missing=True,       # generate the dataset on first use
      image_size=64,
      num_frames=8,
      max_digits=2,
      train_size=8192,
      test_size=512,
      dataset_seed=0,
      global_batch_size=24,
      num_threads=2,
  ))

  # Pixel video -> latents. 'space_to_depth' is the fixed stand-in for the VAE.
  c.latent = ml_collections.ConfigDict(dict(
      kind='space_to_depth',
      factor=4,
      channels=1,
      shift=-0.926,                # mean/std of 64 px moving-digit pixels: latents ~ N(0, 1)
      scale=2.87,
  ))

  c.model = ml_collections.ConfigDict(dict(
      sample_size=16,              # full-resolution latent side (64 px / 4)
      patch_size=2,
      in_channels=16,
      num_layers=4,
      num_attention_heads=4,
      attention_head_dim=32,
      joint_attention_dim=128,
      caption_projection_dim=128,
      pooled_projection_dim=128,
      rope_axes_dim=(32,),         # temporal RoPE over the whole head, as official
      attention='xla',
      remat=False,
  ))

  c.text = ml_collections.ConfigDict(dict(
      encoder='toy',               # 'toy' (trained jointly) | 'precomputed'
      max_length=48,               # bytes; moving-digits captions have at most 37
      width=128,
      num_layers=2,
      num_heads=4,
  ))

  c.pyramid = ml_collections.ConfigDict(dict(
      stages=3,
      stage_range=ml_collections.FieldReference(None, field_type=list),
      gamma=1 / 3,
      shift=1.0,
      num_train_timesteps=1000,
      sample_ratios=[1, 1, 1],
      text_dropout=0.1,            # classifier-free guidance training
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=5e-4,
      warmup_steps=100,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=1e-4,
      clip_grad=1.0,
      ema_decay=0.995,            # short CPU runs; the official long runs use 0.9999
  ))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000,
      log_every=10,
      checkpoint_every=100,
      keep_checkpoints=3,
      sample_every=500,
  ))

  c.sample = ml_collections.ConfigDict(dict(
      steps_per_stage=[20, 20, 20],
      guidance_scale=7.0,
      prompts=['a 3 moving left', 'a 7 moving down', 'a 0 moving right and a 1 moving up',
               'a 5 moving up'],
      fps=4,
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1))
  c.rules = DIT_RULES
  c.dtype = 'float32'              # compute dtype; parameters stay float32
  return c


def latent_size(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """Full-resolution latent (frames, height, width)."""
  factor = config.latent.factor
  return (config.data.num_frames, config.data.image_size // factor,
          config.data.image_size // factor)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistency in the config."""
  k = config.pyramid.stages
  if k < 1:
    raise ValueError(f'pyramid.stages must be >= 1, got {k}')
  if len(config.pyramid.sample_ratios) != k:
    raise ValueError(f'pyramid.sample_ratios {list(config.pyramid.sample_ratios)} needs one '
                     f'entry per stage ({k})')
  if len(config.sample.steps_per_stage) != k:
    raise ValueError(f'sample.steps_per_stage {list(config.sample.steps_per_stage)} needs '
                     f'one entry per stage ({k})')
  size = config.data.image_size
  if size % config.latent.factor:
    raise ValueError(f'data.image_size {size} is not divisible by the latent factor '
                     f'{config.latent.factor}')
  _, h, w = latent_size(config)
  need = 2 ** (k - 1) * config.model.patch_size
  if h % need or w % need:
    raise ValueError(
        f'latent resolution {h}x{w} (image {size} / latent factor {config.latent.factor}) '
        f'is not divisible by 2^(stages-1) x patch_size = {need}: every pyramid stage '
        f'must patchify to whole tokens')
  if config.model.in_channels != config.latent.channels * config.latent.factor ** 2:
    raise ValueError(f'model.in_channels {config.model.in_channels} != latent channels '
                     f'{config.latent.channels * config.latent.factor ** 2}')
  columns = sum(config.pyramid.sample_ratios)
  if config.data.global_batch_size % columns:
    raise ValueError(f'data.global_batch_size {config.data.global_batch_size} is not '
                     f'divisible by sum(pyramid.sample_ratios) = {columns}')
  for split in ('train_size', 'test_size'):
    if config.data[split] < 1:
      raise ValueError(f'data.{split} must be >= 1, got {config.data[split]}: the dataset '
                       'would be empty')
  if config.dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
  if config.text.encoder not in ('toy', 'precomputed'):
    raise ValueError(f"text.encoder must be 'toy' or 'precomputed', got {config.text.encoder!r}")
  for name in ('num_steps', 'log_every', 'checkpoint_every', 'sample_every', 'keep_checkpoints'):
    if config.train[name] < 1:
      raise ValueError(f'train.{name} must be >= 1, got {config.train[name]}')
