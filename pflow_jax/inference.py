"""Text -> video: the pyramid sampler driven by the model, then latent decode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from pflow_jax import config as config_lib
from pflow_jax.data import pipeline, text_embeddings
from pflow_jax.models import text as text_lib
from pflow_jax.models.latent_codec import LatentCodec
from pflow_jax.parallel import rules
from pflow_jax.pyramid import sampler, schedule as schedule_lib
from pflow_jax.training import step as step_lib


def make_generate_fn(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                     codec: LatentCodec, *, num_samples: int,
                     steps_per_stage: Sequence[int], guidance_scale: float):
  """generate(params, text, rng) -> videos float [-1, 1] [N, T, H, W, C], jitted.

  The codec (with its VAE weights, if any) is an argument of the jitted
  function, bound here, so its weights are never compile-time constants.

  `text` is a text batch of N prompts (`prompt_text` or `load_text_embeddings`).
  Classifier-free guidance contrasts it with the empty prompt, as in training.
  """
  schedule = schedule_lib.from_config(config.pyramid)
  t, h, w = config_lib.latent_size(config)
  shape = (num_samples, t, h, w, codec.latent_channels)
  steps = tuple(int(s) for s in steps_per_stage)
  if len(steps) != config.pyramid.stages:
    raise ValueError(f'steps_per_stage {steps} needs one entry per stage ({config.pyramid.stages})')

  @jax.jit
  def generate(params: nnx.State, codec: LatentCodec, text: dict[str, jax.Array],
               rng: jax.Array) -> jax.Array:
    model = nnx.merge(graphdef, params)
    with rules.use_rules(config.rules):
      cond = model.encode_text(text)
      uncond = model.unconditional_text(text)
      latents = sampler.sample(model.velocity, cond, uncond, rng, schedule, shape, steps,
                               guidance_scale, config.pyramid.prediction,
                               renoise=config.sample.renoise)
      return codec.decode(latents)

  return lambda params, text, rng: generate(params, codec, text, rng)


def to_uint8(videos: jax.Array) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels on the host (every process gets all of them)."""
  pixels = pipeline.video_to_uint8(videos)
  if isinstance(pixels, jax.Array) and not pixels.is_fully_addressable:
    pixels = multihost_utils.process_allgather(pixels, tiled=True)
  return np.array(pixels)


def tokenize_prompts(config: ml_collections.ConfigDict, prompts: Sequence[str]) -> np.ndarray:
  return text_lib.tokenize(list(prompts), config.text.max_length)


def prompt_text(config: ml_collections.ConfigDict, prompts: Sequence[str]) -> dict[str, np.ndarray]:
  """The text batch of prompts for a model with the toy text encoder."""
  if config.text.encoder != 'toy':
    raise ValueError(f"this model reads precomputed text embeddings (text.encoder="
                     f"{config.text.encoder!r}), not prompts: give them as a file "
                     "(sample --text_embeddings=FILE.npz; format: inference.load_text_embeddings)")
  return {'tokens': tokenize_prompts(config, prompts)}


def pad_text(text: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  """A text batch grown to n prompts by repeating its last one (e.g. to fill every
  data-parallel device); the extra samples are dropped after generation."""
  have = batch_size(text)
  if n < have:
    raise ValueError(f'cannot pad a batch of {have} prompts to {n}')
  return {k: np.concatenate([v, np.repeat(v[-1:], n - have, axis=0)]) for k, v in text.items()}


def batch_size(text: dict[str, jax.Array]) -> int:
  return int(jax.tree.leaves(text)[0].shape[0])


def load_text_embeddings(path: str, config: ml_collections.ConfigDict,
                         num_samples: int | None = None) -> dict[str, np.ndarray]:
  """The text batch of `num_samples` samples (None: one per row) from an embeddings file
  (format: data/text_embeddings.py) with num_samples rows or one for every sample."""
  arrays = text_embeddings.read(path, config.model)
  rows = len(arrays['seq'])
  num_samples = rows if num_samples is None else num_samples
  if rows not in (1, num_samples):
    raise ValueError(f'{path} holds {rows} prompts; give one, or one per sample '
                     f'({num_samples})')
  batch = {}
  for prefix in ('', 'null_'):
    for name in ('seq', 'mask', 'pooled'):
      array = arrays[prefix + name]
      batch[f'{prefix}text_{name}'] = np.repeat(array, num_samples // len(array), axis=0)
  return batch


class VideoGenerator:
  """Autoregressive text(-and-image)-to-video: frame by frame through the pyramid stages.

  Frame 0 is generated as an image (sample.steps_per_stage, guidance_scale),
  later frames with sample.video_steps_per_stage and video_guidance_scale,
  each conditioned on the compressed history of the last `window` frames.
  Memory is bounded by the window, not the length. With pad_history (the
  default) the history is padded to the window and masked, so two compiled
  programs serve every frame (the first, and the rest: the frame index is
  traced) and a video of any length compiles once; early frames then pay for
  the whole window. pad_history=False compiles one program per history length
  (up to the window) and gives each frame its exact cost.
  """

  def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
               codec: LatentCodec, *, num_frames: int, window: int | None = None,
               cache: bool | None = None, pad_history: bool = True):
    if not config.temporal.autoregressive:
      raise ValueError('frame-by-frame generation needs a model trained with '
                       'temporal.autoregressive=True')
    self.schedule = schedule_lib.from_config(config.pyramid)
    _, h, w = config_lib.latent_size(config)
    if num_frames < 1:
      raise ValueError(f'num_frames must be >= 1 latent frame, got {num_frames}')
    self.num_frames = num_frames
    self.window = config_lib.history_window(config, num_frames) if window is None else window
    self.cache = config.sample.cache_history if cache is None else cache
    self.shape = (h, w, codec.latent_channels)
    self.codec = codec
    self.pad_history = pad_history
    self.plans = functools.cache(lambda history: step_lib.history_plans(config, history))
    sample = config.sample

    @functools.partial(jax.jit, static_argnames=('history', 'first'))
    def unit_step(params, text, frames, unit, rng, history, first):
      model = nnx.merge(graphdef, params)
      with rules.use_rules(config.rules):
        cond = model.encode_text(text)
        uncond = model.unconditional_text(text)
        x = sampler.sample_unit(
            model, cond, uncond, rng, self.schedule, frames, unit, self.plans(history),
            sample.steps_per_stage if first else sample.video_steps_per_stage,
            sample.guidance_scale if first else sample.video_guidance_scale,
            use_cache=self.cache and history > 0,  # text sees frame 0: no cache there
            prediction=config.pyramid.prediction, renoise=sample.renoise,
            history_noise=sample.history_noise)
      return jax.lax.dynamic_update_slice_in_dim(frames, x.astype(frames.dtype), unit, axis=1)

    self._unit_step = unit_step
    self._decode = jax.jit(lambda c, z: c.decode(z))

  def latents(self, params: nnx.State, text: dict[str, jax.Array], rng: jax.Array,
              prefix: jax.Array | None = None, on_frame=None) -> jax.Array:
    """Latents [N, num_frames, h, w, C] for a text batch of N prompts; `prefix`
    [N, P, h, w, C] fixes the first P frames (image-to-video: P = 1; video
    extension: more). on_frame(i) is called per new frame."""
    n = batch_size(text)
    frames = jnp.zeros((n, self.num_frames) + self.shape, jnp.float32)
    first = 0
    if prefix is not None:
      if prefix.shape[0] != n or tuple(prefix.shape[2:]) != self.shape:
        raise ValueError(f'prefix latents {prefix.shape} do not fit [N={n}, P, '
                         f'{", ".join(map(str, self.shape))}]')
      first = prefix.shape[1]
      if first >= self.num_frames:
        raise ValueError(f'the prefix has {first} latent frames; nothing is left to generate '
                         f'in {self.num_frames}')
      frames = frames.at[:, :first].set(prefix)
    for unit in range(first, self.num_frames):
      frames = self.generate_unit(params, text, frames, unit, rng)
      if on_frame is not None:
        jax.block_until_ready(frames)
        on_frame(unit)
    return frames

  def generate_unit(self, params: nnx.State, text: dict[str, jax.Array], frames: jax.Array,
                    unit: int, rng: jax.Array) -> jax.Array:
    """`frames` [N, num_frames, h, w, C] with frame `unit` generated on the frames before it."""
    if not 0 <= unit < self.num_frames:
      raise ValueError(f'unit {unit} is outside the {self.num_frames} frames')
    return self._unit_step(params, text, frames, jnp.int32(unit), rng,
                           history=self.history_length(unit), first=unit == 0)

  def history_length(self, unit: int) -> int:
    """History frames the program of frame `unit` is compiled for."""
    if unit == 0:
      return 0
    return self.window if self.pad_history else min(unit, self.window)

  def decode(self, latents: jax.Array) -> jax.Array:
    return self._decode(self.codec, latents)


def sample_text(config: ml_collections.ConfigDict) -> dict[str, np.ndarray] | None:
  """The text batch of the samples written during training: config.sample.prompts, or for
  precomputed text the file config.sample.text_embeddings (None: no samples)."""
  if config.text.encoder == 'toy':
    return prompt_text(config, config.sample.prompts)
  if config.sample.text_embeddings:
    return load_text_embeddings(config.sample.text_embeddings, config)
  logging.warning('no samples during training: text.encoder is %r and '
                  'sample.text_embeddings is empty', config.text.encoder)
  return None


# sample(params, text, rng, prefix=None, on_frame=None) -> uint8 videos [N, T, H, W, C].
VideoSampler = Callable[..., np.ndarray]


def make_video_sampler(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                       codec: LatentCodec, *, num_samples: int,
                       pixel_frames: int | None = None) -> VideoSampler:
  """The config's model and sampling settings (config.sample) as one sampler for text
  batches of num_samples prompts.

  Autoregressive models generate frame by frame (VideoGenerator), pixel_frames
  long (default: the training clips), and continue a latent prefix [N, P, h, w, C]
  when given one (image-to-video, video extension); on_frame(i) is called per new
  latent frame. Other models generate whole training-length clips in one program.
  """
  if config.temporal.autoregressive:
    frames = pixel_frames or config.data.num_frames
    generator = VideoGenerator(config, graphdef, codec,
                               num_frames=1 + (frames - 1) // config.latent.temporal_factor)

    def sample_frames(params, text, rng, prefix=None, on_frame=None):
      return to_uint8(generator.decode(generator.latents(params, text, rng, prefix,
                                                         on_frame=on_frame)))
    return sample_frames
  if pixel_frames not in (None, config.data.num_frames):
    raise ValueError(f'{pixel_frames} frames: only a model trained with '
                     'temporal.autoregressive=True generates other lengths than its clips')
  generate = make_generate_fn(config, graphdef, codec, num_samples=num_samples,
                              steps_per_stage=config.sample.steps_per_stage,
                              guidance_scale=config.sample.guidance_scale)

  def sample_clips(params, text, rng, prefix=None, on_frame=None):
    if prefix is not None:
      raise ValueError('continuing given frames needs a model trained with '
                       'temporal.autoregressive=True')
    return to_uint8(generate(params, text, rng))
  return sample_clips


def training_sampler(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                     codec: LatentCodec) -> Callable[[nnx.State, jax.Array], np.ndarray] | None:
  """sample(params, rng) -> uint8 videos of the config's sample prompts, as the trainer
  writes them every train.sample_every steps (training/loop.train's make_sampler);
  None when there is nothing to sample."""
  text = sample_text(config)
  if text is None:
    return None
  sample = make_video_sampler(config, graphdef, codec, num_samples=batch_size(text))
  return lambda params, rng: sample(params, text, rng)
