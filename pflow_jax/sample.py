r"""Samples videos from a trained workdir.

  python -m pflow_jax.sample --workdir=runs/digits --prompt "a 3 moving left" \
      --num_samples 4 --out samples.mp4 [--steps_per_stage 20,20,20 --guidance_scale 7 --seed 0]

With a model trained autoregressively (temporal.autoregressive) frames are
generated one after another, and three more things work:
  --num_frames 33            a video longer (or shorter) than the training clips
  --image first.png          image-to-video: the image is encoded as frame 0
  --video clip.mp4           video extension: continue the clip's frames
A model trained on precomputed text embeddings (text.encoder 'precomputed', e.g.
the released ones) takes them instead of a prompt:
  --text_embeddings emb.npz  T5/CLIP-style embeddings (format: inference.load_text_embeddings)
Writes the video (.mp4 or .gif: the samples side by side) and a PNG frame grid
next to it (one row per sample); existing outputs are kept unless --overwrite,
and an output is never one of the inputs. Uses the EMA parameters of the latest (or
--step) checkpoint and the config saved with it.
"""

from __future__ import annotations

import os

from absl import flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from pflow_jax import checkpoint, cli, config as config_lib, distributed, inference, restore
from pflow_jax.data import pipeline, video_folder, video_io
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
_PROMPT = flags.DEFINE_string('prompt', None, 'Text prompt.')
_TEXT_EMBEDDINGS = flags.DEFINE_string(
    'text_embeddings', None, 'Instead of --prompt, for models on precomputed text: an .npz of '
    'embeddings (seq, mask, pooled and null_*; see inference.load_text_embeddings).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 4, 'Videos to generate.')
_OUT = flags.DEFINE_string('out', 'samples.mp4', 'Output video path (.mp4 or .gif).')
_STEPS = flags.DEFINE_list('steps_per_stage', None,
                           'Euler steps per pyramid stage (of the first frame when '
                           'autoregressive; default: the config\'s).')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None, 'CFG scale (first frame when '
                               'autoregressive; default: the config\'s).')
_VIDEO_STEPS = flags.DEFINE_list('video_steps_per_stage', None,
                                 'Euler steps per stage of the later frames (autoregressive).')
_VIDEO_GUIDANCE = flags.DEFINE_float('video_guidance_scale', None,
                                     'CFG scale of the later frames (autoregressive).')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', None, 'Pixel frames to generate '
                                   '(autoregressive; default: the training clips\').')
_IMAGE = flags.DEFINE_string('image', None, 'Image-to-video: the first frame (PNG/JPEG).')
_VIDEO = flags.DEFINE_string('video', None, 'Video extension: a clip to continue.')
_WINDOW = flags.DEFINE_integer('history_window', None, 'History frames kept (default: config).')
_CACHE = flags.DEFINE_bool('cache_history', None, 'Reuse history keys/values (default: config).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_FPS = flags.DEFINE_integer('fps', None, 'Frames per second of the output (default: config).')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing output video and grid.')
flags.mark_flags_as_required(['workdir'])


def conditioning_frames(config: ml_collections.ConfigDict, image: str | None,
                        video: str | None, max_frames: int) -> np.ndarray | None:
  """uint8 [T, H, W, C] pixel frames to continue: the image, or the video's first
  1 + k * temporal_factor frames (at most max_frames), resized and centre-cropped."""
  if image and video:
    raise ValueError('give --image or --video, not both')
  if not (image or video):
    return None
  if image:
    if not os.path.exists(image):
      raise FileNotFoundError(f'no image at {image}')
    frames = np.asarray(Image.open(image).convert('RGB'))[None]
  else:
    frames = video_io.read_video(video)
    tf = config.latent.temporal_factor
    keep = 1 + (min(len(frames), max_frames) - 1) // tf * tf
    frames = frames[:keep]
  h, w = config_lib.image_hw(config.data)
  frames = np.stack([video_folder.resize_and_crop(f, h, w) for f in frames])
  if config.latent.pixel_channels == 1:
    frames = np.asarray([np.asarray(Image.fromarray(f).convert('L')) for f in frames])[..., None]
  return frames


def check_outputs(outputs: list[str], inputs: list[str | None], overwrite: bool) -> None:
  """Raises unless every output is a new file (or overwrite) and none is an input."""
  given = {os.path.realpath(p) for p in inputs if p}
  for path in outputs:
    if os.path.realpath(path) in given:
      raise ValueError(f'{path} is both an input and an output of this run; choose another '
                       '--out (the frame grid is written next to it as <stem>.png)')
    if os.path.exists(path) and not overwrite:
      raise FileExistsError(f'{path} exists; pass --overwrite to replace it')


def run(workdir: str, prompt: str | None, num_samples: int, out: str, *, seed: int = 0,
        step: int | None = None, fps: int | None = None, num_frames: int | None = None,
        image: str | None = None, video: str | None = None,
        overrides: dict | None = None, overwrite: bool = False,
        text_embeddings: str | None = None) -> str:
  """Samples into `out` (+ a PNG grid next to it); returns the grid's path.

  overrides: `sample` section fields (steps, guidance, history window, cache).
  """
  ext = os.path.splitext(out)[1].lower()
  if ext not in ('.mp4', '.gif'):
    raise ValueError(f'--out must end in .mp4 or .gif, got {out!r}')
  grid = os.path.splitext(out)[0] + '.png'
  check_outputs([out, grid], [image, video, text_embeddings], overwrite)
  if (prompt is None) == (text_embeddings is None):
    raise ValueError('give either --prompt or --text_embeddings (a model on precomputed text '
                     'takes the file, one with the toy encoder the prompt)')
  if num_samples < 1:
    raise ValueError(f'--num_samples must be >= 1, got {num_samples}')
  config = restore.load_config(workdir, step)
  with config.unlocked():
    config.sample.update({k: v for k, v in (overrides or {}).items() if v is not None})
  config_lib.validate(config)
  autoregressive = config.temporal.autoregressive
  if not autoregressive and (num_frames or image or video):
    raise ValueError('--num_frames, --image and --video need a model trained with '
                     'temporal.autoregressive=True (this one generates whole clips)')
  tf = config.latent.temporal_factor
  pixel_frames = num_frames or config.data.num_frames
  if (pixel_frames - 1) % tf:
    raise ValueError(f'--num_frames {pixel_frames} must be 1 + a multiple of the latent '
                     f'temporal factor {tf}')
  if text_embeddings is not None:
    if config.text.encoder != 'precomputed':
      raise ValueError(f'--text_embeddings: this model encodes prompts itself (text.encoder='
                       f'{config.text.encoder!r}); give --prompt')
    text = inference.load_text_embeddings(text_embeddings, config, num_samples)
  else:
    text = inference.prompt_text(config, [prompt] * num_samples)
  # Data-parallel over the samples on every device of every process; the batch is
  # padded to a multiple of the batch shards. Noise is drawn per sample along the
  # batch axis, so the padding leaves the first num_samples videos as they would be.
  mesh = mesh_lib.make_mesh(dict(config.mesh))
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  padded = -(-num_samples // shards) * shards
  text = inference.pad_text(text, padded)
  graphdef, params, step = restore.load_params(config, workdir, step, mesh)
  logging.info('sampling from step %d of %s on %d device(s)', step, workdir, mesh.size)
  with jax.set_mesh(mesh):
    videos = _generate(config, graphdef, params, text, seed, padded, pixel_frames, image,
                       video)[:num_samples]
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    strip = np.concatenate(list(videos), axis=2)
    video_io.write_video(out, strip, fps=fps or config.sample.fps)
    video_io.write_frame_grid(grid, videos)
  return grid


def _generate(config: ml_collections.ConfigDict, graphdef, params, text: dict[str, np.ndarray],
              seed: int, num_samples: int, pixel_frames: int, image: str | None,
              video: str | None) -> np.ndarray:
  """uint8 videos [num_samples, T, H, W, C] of the config's model."""
  tf = config.latent.temporal_factor
  codec = latent_codec.make_codec(config.latent)
  rng = jax.random.key(seed)
  sample = inference.make_video_sampler(config, graphdef, codec, num_samples=num_samples,
                                        pixel_frames=pixel_frames)
  if not config.temporal.autoregressive:
    return sample(params, text, rng)
  given = conditioning_frames(config, image, video, pixel_frames - tf)
  prefix = None
  if given is not None:
    pixels = pipeline.video_to_float(jnp.asarray(np.repeat(given[None], num_samples, 0)))
    prefix = jax.jit(lambda c, v: c.encode(v))(codec, pixels)
    logging.info('continuing %d given frame(s) (%d latent)', len(given), prefix.shape[1])
  latent_frames = 1 + (pixel_frames - 1) // tf
  bar = tqdm(total=latent_frames - (0 if prefix is None else prefix.shape[1]),
             desc='frames', unit='latent frame', disable=jax.process_index() != 0)
  videos = sample(params, text, rng, prefix, on_frame=lambda _: bar.update(1))
  bar.close()
  if given is not None:  # show the given frames as they are, not re-decoded
    videos[:, :len(given)] = given[None]
  return videos


def main(argv):
  del argv
  distributed.initialize()
  ints = lambda v: None if v is None else [int(s) for s in v]
  grid = run(_WORKDIR.value, _PROMPT.value, _NUM_SAMPLES.value, _OUT.value, seed=_SEED.value,
             step=_STEP.value, fps=_FPS.value, num_frames=_NUM_FRAMES.value,
             image=_IMAGE.value, video=_VIDEO.value,
             overrides=dict(steps_per_stage=ints(_STEPS.value),
                            guidance_scale=_GUIDANCE.value,
                            video_steps_per_stage=ints(_VIDEO_STEPS.value),
                            video_guidance_scale=_VIDEO_GUIDANCE.value,
                            history_window=_WINDOW.value, cache_history=_CACHE.value),
             overwrite=_OVERWRITE.value, text_embeddings=_TEXT_EMBEDDINGS.value)
  if jax.process_index() == 0:
    print(f'wrote {_OUT.value} and {grid}')


if __name__ == '__main__':
  cli.run(main, user_errors=(checkpoint.CheckpointError,))
