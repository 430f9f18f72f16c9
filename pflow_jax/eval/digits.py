r"""The moving-digits ruler: a digit counter + localiser, and the clip metrics built on it.

A small CNN reads one frame and predicts, for each class 0-9, how many digits
of that class it shows (0, 1 or 2) and, from a per-class heat map, where the
digit's centre is (soft-argmax). It is trained once, on frames composed the way
data/moving_digits.py composes them (pixelwise max, random positions) from the
*train* digits only, and checked on frames of the held-out test digits.

Clip metrics (per clip, then averaged):
  prompt accuracy       the clip's digits (as a multiset) equal the prompt's; the clip's
                        count of each class is the most likely one given all its frames
                        (per-frame log-probabilities summed), because two 16 px digits on
                        a 32 px canvas always overlap and some single frames are illegible
  motion accuracy       each prompted digit's tracked centre moves the prompted way on the
                        first step (the data guarantees no bounce before frame 1); a step
                        counts when it goes >= 1 px that way and more that way than across.
                        Digits whose class appears twice in the prompt are not tracked.
  temporal consistency  each frame on its own reads the same digits
  frechet distance      between generated and real clips, of clip features: the mean over
                        frames of the penultimate features and the mean absolute change
                        between consecutive frames (appearance and motion)

  python -m pflow_jax.eval.digits --train [--config=configs/moving_digits.py] [--scorer_dir=DIR]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import re
import time

from absl import flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from PIL import Image
from tqdm import tqdm

from pflow_jax import config as config_lib
from pflow_jax.data import moving_digits
from pflow_jax.eval import frechet

NUM_CLASSES = 10
MAX_COUNT = 2            # digits of one class a frame can show (the data's max_digits)
FEATURE_DIM = 64         # penultimate features per frame; clip features are twice that
CLIP_FEATURE_DIM = 2 * FEATURE_DIM
MIN_FRECHET_SAMPLES = CLIP_FEATURE_DIM  # fewer clips than dimensions: a singular covariance
MIN_STEP_PX = 1.0        # a first step this long (px) along the prompted direction counts
VERSION = 3              # bump when training or the network changes what a scorer is
# On held-out single-digit frames: below this a scorer is refused (a broken training or load).
# The default scorer reaches 0.979 (docs/evaluation.md).
REQUIRED_ACCURACY = 0.9
_CAPTION = re.compile(r'a (\d) moving (' + '|'.join(moving_digits.DIRECTIONS) + ')')


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
  """What decides a trained scorer: the frames it reads and how it is trained."""
  image_size: int = 32
  digit_size: int = 16
  test_fraction: float = 0.1
  steps: int = 4000
  batch_size: int = 96
  lr: float = 3e-3
  seed: int = 0

  @property
  def name(self) -> str:
    fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
    digest = hashlib.sha256(f'{VERSION}:{fields}'.encode()).hexdigest()[:10]
    return f'{self.image_size}px_{self.digit_size}d_v{VERSION}_{digest}'


def scorer_config(data: ml_collections.ConfigDict, steps: int | None = None) -> ScorerConfig:
  """The scorer for a DiT config's `data` section (moving digits only); `steps` trains a
  shorter one (smoke tests: its numbers are not comparable with the default's)."""
  if data.name != 'moving_digits':
    raise ValueError(f'the digits metrics need data.name moving_digits, got {data.name!r}')
  if data.image_width not in (None, data.image_size):
    raise ValueError('the digits metrics need square frames')
  cfg = ScorerConfig(image_size=data.image_size, digit_size=data.digit_size)
  return cfg if steps is None else dataclasses.replace(cfg, steps=steps)


class DigitNet(nnx.Module):
  """frames [B, H, W, 1] in [0, 1] -> (count logits [B, 10, 3], heat logits [B, h, w, 10],
  features [B, FEATURE_DIM]); h, w = H / 4, W / 4."""

  def __init__(self, *, rngs: nnx.Rngs):
    conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=s, padding='SAME', rngs=rngs)
    self.convs = nnx.List([conv(1, 32, 5, 2), conv(32, 64, 3, 2), conv(64, 96, 3, 1),
                           conv(96, 96, 3, 1)])
    self.heat = nnx.Conv(96, NUM_CLASSES, (1, 1), rngs=rngs)
    self.hidden = nnx.Linear(192, 128, rngs=rngs)
    self.features = nnx.Linear(128, FEATURE_DIM, rngs=rngs)
    self.counts = nnx.Linear(FEATURE_DIM + 2 * NUM_CLASSES, NUM_CLASSES * (MAX_COUNT + 1),
                             rngs=rngs)

  def __call__(self, frames: jax.Array):
    x = frames
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    pooled = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)
    features = jax.nn.relu(self.features(jax.nn.relu(self.hidden(pooled))))
    heat = self.heat(x)
    # Where a class's heat map peaks and how much of it there is: presence and count cues.
    flat = heat.reshape(heat.shape[0], -1, NUM_CLASSES)
    cues = jnp.concatenate([flat.max(axis=1), jax.nn.logsumexp(flat, axis=1)], axis=-1)
    logits = self.counts(jnp.concatenate([features, cues], axis=-1))
    return logits.reshape(-1, NUM_CLASSES, MAX_COUNT + 1), heat, features


def soft_argmax_centres(heat: jax.Array, image_size: int) -> jax.Array:
  """Per-class centres [B, 10, 2] (y, x in pixels) from heat logits [B, h, w, 10]."""
  b, h, w, c = heat.shape
  probs = jax.nn.softmax(heat.reshape(b, h * w, c), axis=1).reshape(b, h, w, c)
  cell = image_size / h
  ys = (jnp.arange(h) + 0.5) * cell - 0.5
  xs = (jnp.arange(w) + 0.5) * cell - 0.5
  cy = jnp.einsum('bhwc,h->bc', probs, ys)
  cx = jnp.einsum('bhwc,w->bc', probs, xs)
  return jnp.stack([cy, cx], axis=-1)


@functools.cache
def augmented_digits(digit_size: int, test_fraction: float, variants: int = 8,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The train digits and `variants` random affine distortions of each (rotation +-12 deg,
  scale 0.85-1.1, shear +-0.2), at digit_size px: (float32 [N, s, s] in [0, 1], labels [N]).

  Only the train pool: with 450 digits a class, a scorer learns the digits rather than
  the handwriting of the few writers it saw when they come slightly deformed.
  """
  images, labels = moving_digits.mnist_digits()
  pool = moving_digits.source_pool('train', test_fraction)
  rng = np.random.default_rng(seed)
  out, out_labels = [], []
  c = moving_digits.DIGIT_SIZE / 2
  for row in pool:
    base = Image.fromarray(images[row])
    for v in range(variants + 1):
      if v:
        angle = np.deg2rad(rng.uniform(-12, 12))
        scale = rng.uniform(0.85, 1.1)
        shear = rng.uniform(-0.2, 0.2)
        # Output pixel -> input pixel, about the centre.
        a = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        a = a @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
        offset = np.array([c, c]) - a @ np.array([c, c])
        im = base.transform(base.size, Image.Transform.AFFINE,
                            (a[0, 0], a[0, 1], offset[0], a[1, 0], a[1, 1], offset[1]),
                            resample=Image.Resampling.BILINEAR)
      else:
        im = base
      if digit_size != moving_digits.DIGIT_SIZE:
        im = im.resize((digit_size, digit_size), Image.Resampling.LANCZOS)
      out.append(np.asarray(im, np.float32) / 255.0)
      out_labels.append(labels[row])
  return np.stack(out), np.asarray(out_labels, np.int32)


def compose_frames(rng: np.random.Generator, num: int, cfg: ScorerConfig, split: str,
                   counts_p: tuple[float, ...] = (0.05, 0.475, 0.475),
                   augment: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Frames as the dataset draws them: (uint8 [num, H, W, 1], counts int32 [num, 10],
  centres float32 [num, 10, 2], NaN unless the class appears exactly once).

  Digits of `split`'s source pool at uniform positions, combined by pixelwise max.
  augment (train only): affine-distorted digits (augmented_digits), each digit's
  brightness scaled by U(0.6, 1) and, on half the frames, Gaussian pixel noise of
  std U(0, 0.15), so that legible but imperfect samples are read as the digits they show.
  """
  if augment:
    if split != 'train':
      raise ValueError('augmented frames are for training: split must be train')
    images, labels = augmented_digits(cfg.digit_size, cfg.test_fraction)
    pool = np.arange(len(images))
  else:
    _, labels = moving_digits.mnist_digits()
    images = moving_digits.digit_images(cfg.digit_size).astype(np.float32) / 255.0
    pool = moving_digits.source_pool(split, cfg.test_fraction)
  size, limit = cfg.digit_size, cfg.image_size - cfg.digit_size
  frames = np.zeros((num, cfg.image_size, cfg.image_size), np.float32)
  counts = np.zeros((num, NUM_CLASSES), np.int32)
  sums = np.zeros((num, NUM_CLASSES, 2), np.float64)
  how_many = rng.choice(len(counts_p), size=num, p=counts_p)
  sources = pool[rng.integers(len(pool), size=(num, MAX_COUNT))]
  corners = rng.integers(0, limit + 1, size=(num, MAX_COUNT, 2))
  gains = rng.uniform(0.6, 1.0, size=(num, MAX_COUNT)) if augment else np.ones((num, MAX_COUNT))
  for i, k in enumerate(how_many):
    for j in range(k):
      (y, x), source = corners[i, j], sources[i, j]
      window = frames[i, y:y + size, x:x + size]
      np.maximum(window, images[source] * gains[i, j], out=window)
      counts[i, labels[source]] += 1
      sums[i, labels[source]] += (y + (size - 1) / 2, x + (size - 1) / 2)
  if augment:
    std = rng.uniform(0.0, 0.15, size=num).astype(np.float32) * (rng.random(num) < 0.5)
    frames += rng.standard_normal(frames.shape, np.float32) * std[:, None, None]
  centres = np.where((counts == 1)[..., None], sums, np.nan).astype(np.float32)
  return (np.rint(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)[..., None], counts,
          centres)


def _loss(model: DigitNet, frames: jax.Array, counts: jax.Array, centres: jax.Array,
          image_size: int) -> jax.Array:
  logits, heat, _ = model(frames)
  count_loss = optax.softmax_cross_entropy_with_integer_labels(logits, counts).mean()
  pred = soft_argmax_centres(heat, image_size)
  single = ~jnp.isnan(centres[..., 0])
  err = jnp.where(single[..., None], pred - jnp.nan_to_num(centres), 0.0)
  centre_loss = (optax.huber_loss(err, delta=2.0).sum(-1) * single).sum() / jnp.maximum(
      single.sum(), 1)
  return count_loss + 0.05 * centre_loss


def _to_float(frames) -> jax.Array:
  return jnp.asarray(frames, jnp.float32) / 255.0


class DigitScorer:
  """A trained DigitNet and what it reads from frames and clips."""

  def __init__(self, cfg: ScorerConfig, model: DigitNet, report: dict | None = None):
    self.cfg = cfg
    self.report = report or {}
    graphdef, state = nnx.split(model)

    @jax.jit
    def read(state, frames):
      logits, heat, features = nnx.merge(graphdef, state)(_to_float(frames))
      return (jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1),
              soft_argmax_centres(heat, cfg.image_size), features)

    self._state = state
    self._read = read

  def read_frames(self, frames: np.ndarray, batch_size: int = 512):
    """uint8 frames [N, H, W, 1] -> (counts int32 [N, 10], centres [N, 10, 2], features [N, F])."""
    log_probs, centres, features = self.read_frames_log_probs(frames, batch_size)
    return np.argmax(log_probs, -1).astype(np.int32), centres, features

  def read_frames_log_probs(self, frames: np.ndarray, batch_size: int = 512):
    """As read_frames, with count log-probabilities [N, 10, 3] in place of the counts."""
    frames = np.asarray(frames)
    expected = (self.cfg.image_size, self.cfg.image_size, 1)
    if frames.ndim != 4 or frames.shape[1:] != expected or frames.dtype != np.uint8:
      raise ValueError(f'the digit scorer reads uint8 frames [N, {", ".join(map(str, expected))}]'
                       f', got {frames.dtype} {frames.shape}')
    outs = [self._read(self._state, frames[i:i + batch_size])
            for i in range(0, len(frames), batch_size)]
    return tuple(np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(3))

  def score_clips(self, videos: np.ndarray, digits: np.ndarray,
                  directions: np.ndarray) -> dict[str, np.ndarray]:
    """Per-clip metrics of uint8 videos [N, T, H, W, 1] against their prompts.

    digits, directions: int32 [N, M] (-1 for an absent slot), as the dataset stores
    them. Returns prompt_correct, consistent [N] bool, motion_correct [N] float
    (NaN where no prompted digit can be tracked), clip_features [N, 2F] and
    frame_prompt_correct [N, T] bool (each frame read alone: where a clip drifts).
    """
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[1] < 2:
      raise ValueError(f'need videos [N, T >= 2, H, W, 1], got shape {videos.shape}')
    n, t = videos.shape[:2]
    if np.shape(digits)[0] != n or np.shape(directions) != np.shape(digits):
      raise ValueError(f'{n} videos but prompts of shapes {np.shape(digits)}, '
                       f'{np.shape(directions)}')
    log_probs, centres, features = self.read_frames_log_probs(
        videos.reshape((n * t,) + videos.shape[2:]))
    log_probs = log_probs.reshape(n, t, NUM_CLASSES, MAX_COUNT + 1)
    counts = np.argmax(log_probs, -1)
    clip_counts = np.argmax(log_probs.sum(axis=1), -1)  # the frames' evidence together
    centres = centres.reshape(n, t, NUM_CLASSES, 2)
    features = features.reshape(n, t, -1)
    wanted = prompt_counts(digits)
    prompt_correct = np.all(clip_counts == wanted, axis=1)
    consistent = np.all(counts == counts[:, :1], axis=(1, 2))
    motion = np.full(n, np.nan)
    for i in range(n):
      moves = [_moves_as_prompted(centres[i, :2, d], k)
               for d, k in zip(digits[i], directions[i]) if d >= 0 and wanted[i, d] == 1]
      if moves:
        motion[i] = float(all(moves))
    return {'prompt_correct': prompt_correct, 'consistent': consistent,
            'motion_correct': motion, 'clip_features': clip_features(features),
            'frame_prompt_correct': np.all(counts == wanted[:, None], axis=-1)}


def parse_caption(caption: str, max_digits: int) -> tuple[np.ndarray, np.ndarray]:
  """A moving-digits caption -> (digits, directions) int32 [max_digits], -1 padded."""
  parts = caption.split(' and ')
  found = [_CAPTION.fullmatch(p) for p in parts]
  if not all(found) or len(found) > max_digits:
    raise ValueError(f'caption {caption!r} is not of the form "a D moving DIR[ and ...]" with '
                     f'at most {max_digits} digits')
  digits = np.full(max_digits, -1, np.int32)
  directions = np.full(max_digits, -1, np.int32)
  for i, m in enumerate(found):
    digits[i] = int(m.group(1))
    directions[i] = moving_digits.DIRECTIONS.index(m.group(2))
  return digits, directions


def prompt_counts(digits: np.ndarray) -> np.ndarray:
  """int32 [N, 10]: how many digits of each class the prompts name (-1 slots ignored)."""
  digits = np.asarray(digits)
  counts = np.zeros((digits.shape[0], NUM_CLASSES), np.int32)
  for i, row in enumerate(digits):
    for d in row[row >= 0]:
      counts[i, d] += 1
  return counts


def _moves_as_prompted(track: np.ndarray, direction: int) -> bool:
  """Whether centres [2, (y, x)] step the way of DIRECTIONS[direction]."""
  unit = moving_digits.UNIT_VELOCITY[direction]
  step = track[1] - track[0]
  along = float(step @ unit)
  across = abs(float(step[0] * unit[1] - step[1] * unit[0]))
  return along >= MIN_STEP_PX and along > across


def clip_features(frame_features: np.ndarray) -> np.ndarray:
  """[N, T, F] per-frame features -> [N, 2F]: their mean and mean absolute frame-to-frame
  change."""
  f = np.asarray(frame_features, np.float64)
  return np.concatenate([f.mean(axis=1), np.abs(np.diff(f, axis=1)).mean(axis=1)], axis=-1)


def summarise(scores: dict[str, np.ndarray]) -> dict[str, float | int | list[float]]:
  """Clip means of score_clips' per-clip metrics."""
  motion = scores['motion_correct']
  return {'prompt_accuracy': float(np.mean(scores['prompt_correct'])),
          'motion_accuracy': float(np.nanmean(motion)) if np.any(~np.isnan(motion))
          else float('nan'),
          'temporal_consistency': float(np.mean(scores['consistent'])),
          'prompt_accuracy_per_frame': [
              float(a) for a in np.mean(scores['frame_prompt_correct'], axis=0)],
          'clips': int(len(motion))}


def feature_frechet(features1: np.ndarray, features2: np.ndarray) -> float:
  return frechet.frechet_distance(features1, features2, MIN_FRECHET_SAMPLES)


def held_out_report(scorer: DigitScorer, num: int = 2000, seed: int = 1) -> dict[str, float]:
  """Accuracy on frames of held-out (test) digits: one digit, and two digits."""
  report = {}
  for name, p in (('single', (0.0, 1.0, 0.0)), ('two', (0.0, 0.0, 1.0))):
    frames, counts, centres = compose_frames(np.random.default_rng(seed), num, scorer.cfg,
                                             'test', counts_p=p)
    pred, pred_centres, _ = scorer.read_frames(frames)
    report[f'{name}_digit_accuracy'] = float(np.mean(np.all(pred == counts, axis=1)))
    if name == 'single':
      err = np.linalg.norm(pred_centres - centres, axis=-1)
      report['single_digit_centre_error_px'] = float(np.nanmean(err))
  return report


def _param_paths(state: nnx.State) -> tuple[list[str], list, object]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  return [jax.tree_util.keystr(p) for p, _ in leaves], [v for _, v in leaves], treedef


def save_scorer(directory: str, scorer: DigitScorer) -> None:
  """params.npz (no pickle) + scorer.json, written to a temporary folder then renamed."""
  keys, values, _ = _param_paths(scorer._state)
  tmp = directory.rstrip('/') + f'.tmp{os.getpid()}'
  os.makedirs(tmp, exist_ok=True)
  np.savez(os.path.join(tmp, 'params.npz'), **{k: np.asarray(v) for k, v in zip(keys, values)})
  with open(os.path.join(tmp, 'scorer.json'), 'w') as f:
    json.dump({'config': dataclasses.asdict(scorer.cfg), 'version': VERSION,
               'report': scorer.report}, f, indent=1)
  os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
  os.replace(tmp, directory)


def load_scorer(directory: str, cfg: ScorerConfig) -> DigitScorer:
  """The scorer saved in `directory`; ValueError if it was trained for another config."""
  meta_path = os.path.join(directory, 'scorer.json')
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'no digit scorer at {directory}; train it with `python -m '
                            f'pflow_jax.eval.digits --train`')
  with open(meta_path) as f:
    meta = json.load(f)
  if meta['version'] != VERSION or ScorerConfig(**meta['config']) != cfg:
    raise ValueError(f'the digit scorer at {directory} was trained for {meta["config"]} '
                     f'(version {meta["version"]}), not {dataclasses.asdict(cfg)}')
  model = DigitNet(rngs=nnx.Rngs(0))
  keys, values, treedef = _param_paths(nnx.state(model))
  with np.load(os.path.join(directory, 'params.npz'), allow_pickle=False) as stored:
    if sorted(stored.files) != sorted(keys):
      raise ValueError(f'{directory}/params.npz does not hold the DigitNet parameters')
    loaded = [jnp.asarray(stored[k]) for k in keys]
  for k, old, new in zip(keys, values, loaded):
    if old.shape != new.shape:
      raise ValueError(f'{directory}: parameter {k} has shape {new.shape}, expected {old.shape}')
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, loaded))
  return DigitScorer(cfg, model, meta['report'])


def train_scorer(cfg: ScorerConfig, progress: bool = True) -> DigitScorer:
  """Trains a DigitNet on composed frames of the train digits; its held-out report attached."""
  model = DigitNet(rngs=nnx.Rngs(cfg.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(100, cfg.steps // 10), cfg.steps)
  optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, frames, counts, centres):
    loss, grads = nnx.value_and_grad(_loss)(model, _to_float(frames), counts, centres,
                                            cfg.image_size)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(cfg.seed)
  start = time.time()
  compose = functools.partial(compose_frames, rng, cfg.batch_size, cfg, 'train', augment=True)
  bar = tqdm(range(cfg.steps), desc='digit scorer', unit='step', disable=not progress)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the next batch while a step runs
    upcoming = pool.submit(compose)
    for i in bar:
      batch = upcoming.result()
      upcoming = pool.submit(compose)
      loss = step(model, optimizer, *batch)
      if i % 100 == 0:
        bar.set_postfix(loss=f'{float(loss):.4f}')
  scorer = DigitScorer(cfg, model)
  scorer.report = held_out_report(scorer)
  scorer.report['train_seconds'] = round(time.time() - start, 1)
  return scorer


def default_scorer_dir(root: str, cfg: ScorerConfig) -> str:
  return os.path.join(root, 'digit_scorer', cfg.name)


def get_scorer(root: str, cfg: ScorerConfig, train_if_missing: bool = False) -> DigitScorer:
  """The cached scorer for cfg under root, trained (minutes) when missing and allowed."""
  directory = default_scorer_dir(root, cfg)
  if not os.path.exists(os.path.join(directory, 'scorer.json')):
    if not train_if_missing:
      raise FileNotFoundError(f'no digit scorer at {directory}; train it with `python -m '
                              f'pflow_jax.eval.digits --train --scorer_dir={root}`')
    logging.info('training the digit scorer into %s', directory)
    scorer = train_scorer(cfg)
    accuracy = scorer.report['single_digit_accuracy']
    if accuracy < REQUIRED_ACCURACY:
      raise RuntimeError(f'the digit scorer reached {accuracy:.3f} on held-out single-digit '
                         f'frames, below the {REQUIRED_ACCURACY} it must reach; not saved')
    save_scorer(directory, scorer)
  return load_scorer(directory, cfg)


def _main(argv) -> None:
  del argv
  config = flags.FLAGS.config
  config_lib.validate(config)
  cfg = scorer_config(config.data)
  directory = default_scorer_dir(flags.FLAGS.scorer_dir, cfg)
  if flags.FLAGS.train and os.path.exists(directory):
    print(f'a scorer exists at {directory}; delete it to train again')
  scorer = get_scorer(flags.FLAGS.scorer_dir, cfg, train_if_missing=flags.FLAGS.train)
  print(f'digit scorer {directory}')
  print(json.dumps(scorer.report, indent=1))


if __name__ == '__main__':
  from ml_collections import config_flags  # launcher only: importing must define no flags
  from pflow_jax import cli
  config_flags.DEFINE_config_file('config', 'configs/moving_digits.py',
                                  'DiT config whose data the scorer reads.', lock_config=True)
  flags.DEFINE_bool('train', False, 'Train the scorer if it is not cached yet.')
  flags.DEFINE_string('scorer_dir', 'data', 'Root of the scorer cache '
                      '(<scorer_dir>/digit_scorer/<name>).')
  cli.run(_main)
