r"""Scores what a trained workdir generates (or a folder of videos) on the moving-digits ruler.

  python -m pflow_jax.evaluate --workdir=runs/digits --num_samples=256 [--task=i2v]
  python -m pflow_jax.evaluate --workdir=runs/digits --num_samples=400 --metrics=digits,fvd
  python -m pflow_jax.evaluate --workdir=runs/digits --videos=DIR    # other systems' clips

Samples the EMA weights of the latest (or --step) checkpoint on the captions of
the first --num_samples clips of the test split, in batches, and scores them with
pflow_jax/eval/digits.py against the test clips. Three reference rows come with
every report: the real test clips themselves (the ceiling; their Frechet
distance is between two disjoint halves of the test split), uniform noise (the
floor) and, as a memorisation check, each clip's RMS pixel distance to its
nearest training clip (generated against real test clips).
The report also says whether the model uses its prompt (eval/conditioning.py):
its training loss per pyramid stage on those test clips with their own captions,
shuffled captions and the empty caption.
Writes <workdir>/eval/<name>.json and a PNG of the first 16 samples with their
verdicts, both only when everything has been scored; <name> is the checkpoint
step plus each setting given that differs from the config's (e.g.
2400_steps10-10-10_norenoise), and the clip count, FVD and a short scorer when not
the default (2400_n400_fvd), so other settings never overwrite a report. The report holds the
training FLOPs to that step and the sampling FLOPs per clip (training/flops.py).

--videos=DIR scores DIR/captions.jsonl ({"file": ..., "caption": ...} per line;
the files are .mp4, .gif or .npy uint8 [T, H, W(, C)]) instead of sampling; the
report goes to DIR/eval.json, its count (other than 256) and FVD named as above
(DIR/eval_n400_fvd.json). --task=i2v gives the model the first frame of each
test clip (autoregressive models only) and also reports how often the last
frame shows the given frame's digits. A model trained on stored latents (`encode`)
is scored against the videos its latents were encoded from.

--metrics=digits,fvd adds FVD (eval/i3d.py: Kinetics-400 I3D logits, 16 frames at
224 px) to each row, against the whole test split; the real row's FVD is that of
as many training clips, the real-vs-real yardstick. FVD needs at least 400 clips
per set (the feature dimension) and costs about 1.5 s per clip on 2 CPU cores; the
reference sets' features are computed once and kept under <scorer_dir>/i3d_features.
"""

from __future__ import annotations

import json
import os

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from pflow_jax import checkpoint, cli, config as config_lib, inference, restore, storage
from pflow_jax.data import datasets, latent_dataset, pipeline, video_io
from pflow_jax.eval import conditioning
from pflow_jax.eval import digits as digits_lib
from pflow_jax.eval import frechet, i3d
from pflow_jax.eval import grid as grid_lib
from pflow_jax.eval import reports
from pflow_jax.models import latent_codec

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', reports.DEFAULT_NUM_SAMPLES,
                                    'Clips to generate and score.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Clips generated per call.')
_TASK = flags.DEFINE_enum('task', 't2v', ['t2v', 'i2v'], 'Text-to-video, or image-to-video '
                          'from the test clips\' first frames.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', None, 'Pixel frames to generate '
                                   '(autoregressive models; default: the training clips\').')
_VIDEOS = flags.DEFINE_string('videos', None, 'Score this folder of videos instead (see above).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None, 'CFG scale (default: the config\'s).')
_VIDEO_GUIDANCE = flags.DEFINE_float('video_guidance_scale', None, 'CFG scale of the frames '
                                      'after the first (autoregressive models; default: the '
                                      'config\'s).')
_HISTORY_NOISE = flags.DEFINE_float('history_noise', None, 'History corruption s when '
                                    'sampling (autoregressive models; default: the config\'s; '
                                    '0 is the official clean history).')
_STEPS = flags.DEFINE_list('steps_per_stage', None, 'Euler steps per stage (default: config).')
_RENOISE = flags.DEFINE_bool('renoise', None, 'Corrective noise at stage jumps (default: the '
                             'config\'s; --norenoise is the paper\'s ablation).')
_SCORER_DIR = flags.DEFINE_string('scorer_dir', None, 'Root of the digit-scorer and I3D-feature '
                                  'caches (default: the config\'s data.data_dir).')
_SCORER_STEPS = flags.DEFINE_integer('scorer_steps', None, 'Train the digit scorer for this many '
                                     'steps (smoke tests, named in the report; default: the '
                                     'scorer\'s own).')
_METRICS = flags.DEFINE_list('metrics', ['digits'], 'digits (always) and optionally fvd.')
flags.mark_flags_as_required(['workdir'])

METRICS = ('digits', 'fvd')

GRID_ROWS = 16


def _split_arrays(config: ml_collections.ConfigDict, split: str, count: int | None = None):
  """(videos uint8 [N, T, H, W, 1], digits, directions, captions) of a split's first clips."""
  source = datasets.source(config, split)
  n = len(source) if count is None else count
  records = [source[i] for i in range(n)]
  return (np.stack([np.asarray(r['video']) for r in records]),
          np.stack([np.asarray(r['digits']) for r in records]),
          np.stack([np.asarray(r['directions']) for r in records]),
          [r['caption'].decode() if isinstance(r['caption'], bytes) else str(r['caption'])
           for r in records])


def nearest_train_distance(videos: np.ndarray, train: np.ndarray) -> np.ndarray:
  """RMS pixel distance (in [0, 1] units) of each clip to its nearest training clip."""
  if videos.shape[1:] != train.shape[1:]:
    raise ValueError(f'clips {videos.shape[1:]} and training clips {train.shape[1:]} differ')
  a = jnp.asarray(videos.reshape(len(videos), -1), jnp.float32) / 255.0
  b = jnp.asarray(train.reshape(len(train), -1), jnp.float32) / 255.0
  sq = (jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None] - 2.0 * a @ b.T)
  return np.sqrt(np.maximum(np.asarray(sq.min(axis=1)), 0.0) / a.shape[1])


def generate(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, params: nnx.State,
             captions: list[str], *, seed: int, batch_size: int,
             first_frames: np.ndarray | None, num_frames: int | None) -> np.ndarray:
  """uint8 videos [N, T, H, W, C] for the captions, batch by batch."""
  codec = latent_codec.make_codec(config.latent)
  n = len(captions)
  batch_size = min(batch_size, n)
  # Pad to whole batches so one compiled program serves every batch.
  padded = captions + [captions[-1]] * (-n % batch_size)
  text = inference.prompt_text(config, padded)
  if not config.temporal.autoregressive and (first_frames is not None or num_frames):
    raise ValueError('--task=i2v and --num_frames need a model trained with '
                     'temporal.autoregressive=True')
  sample = inference.make_video_sampler(config, graphdef, codec, num_samples=batch_size,
                                        pixel_frames=num_frames or None)
  encode = jax.jit(lambda c, v: c.encode(v))
  out = []
  for start in tqdm(range(0, len(padded), batch_size), desc='sampling', unit='batch'):
    rng = jax.random.fold_in(jax.random.key(seed), start // batch_size)
    batch_text = {k: jnp.asarray(v[start:start + batch_size]) for k, v in text.items()}
    prefix = None
    if first_frames is not None:
      given = first_frames[start:start + batch_size]
      given = np.concatenate([given, np.repeat(given[-1:], batch_size - len(given), 0)])
      prefix = encode(codec, pipeline.video_to_float(jnp.asarray(given)))
    videos = sample(params, batch_text, rng, prefix)
    if first_frames is not None:  # the given frame as it is, not re-decoded
      videos[:, :1] = given[:, :1]
    out.append(videos)
  return np.concatenate(out)[:n]


def evaluate(config: ml_collections.ConfigDict, videos: np.ndarray, captions: list[str],
             scorer: digits_lib.DigitScorer, given_frames: np.ndarray | None = None,
             with_fvd: bool = False,
             fvd_cache: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """(report, the generated clips' per-clip scores).

  The report has a row for the videos, the real test clips and uniform noise.
  videos are the generated clips for `captions` (the captions of the first
  len(videos) test clips, or any moving-digits captions). with_fvd adds each
  row's FVD to the whole test split (the real row: as many training clips);
  fvd_cache: a folder that keeps the I3D features of those reference sets
  (i3d.cached_video_features), so later evaluations compute only the videos'.
  """
  n = len(videos)
  if n < digits_lib.MIN_FRECHET_SAMPLES:
    raise ValueError(f'the Frechet distance of clip features needs at least '
                     f'{digits_lib.MIN_FRECHET_SAMPLES} clips; got {n}')
  test, test_digits, test_directions, _ = _split_arrays(config, 'test')
  half = len(test) // 2
  if half < digits_lib.MIN_FRECHET_SAMPLES:
    raise ValueError(f'the test split has {len(test)} clips; the real-vs-real reference needs '
                     f'two halves of at least {digits_lib.MIN_FRECHET_SAMPLES}')
  train = _split_arrays(config, 'train')[0]
  parsed = [digits_lib.parse_caption(c, config.data.max_digits) for c in captions]
  digits = np.stack([p[0] for p in parsed])
  directions = np.stack([p[1] for p in parsed])
  if videos.shape[2:] != test.shape[2:]:
    raise ValueError(f'videos have frames {videos.shape[2:]}, the test clips {test.shape[2:]}')

  # Frechet distances are to the second half of the test split, at the size of the first
  # half's real-vs-real reference.
  size = min(n, half)
  real_b = scorer.score_clips(test[half:half + size], test_digits[half:half + size],
                              test_directions[half:half + size])['clip_features']
  real_scores = scorer.score_clips(test[:n], test_digits[:n], test_directions[:n])
  rows = {}

  def row_of(clips):
    scores = scorer.score_clips(clips, digits, directions)
    row = digits_lib.summarise(scores)
    row['frechet_distance'] = digits_lib.feature_frechet(scores['clip_features'][:size],
                                                         real_b)
    if clips.shape[1:] == train.shape[1:]:
      row['nearest_train_rms'] = float(np.mean(nearest_train_distance(clips, train)))
    return row, scores

  rows['generated'], scores = row_of(videos)
  real_row = digits_lib.summarise(real_scores)
  real_row['frechet_distance'] = digits_lib.feature_frechet(
      real_scores['clip_features'][:size], real_b)
  real_row['nearest_train_rms'] = float(np.mean(nearest_train_distance(test[:n], train)))
  rows['real_test_clips'] = real_row
  noise = np.random.default_rng(0).integers(0, 256, size=videos.shape, dtype=np.uint8)
  rows['uniform_noise'] = row_of(noise)[0]
  if with_fvd:
    check_fvd_sizes(n, len(test), len(train))
    variables = i3d.load_i3d_weights()

    def logits(clips, what, reference=True):
      print(f'FVD: I3D features of {len(clips)} {what} clips')
      if reference and fvd_cache:
        return i3d.cached_video_features(clips, fvd_cache, variables)['logits']
      return i3d.video_features(clips, variables)['logits']

    test_logits = logits(test, 'test')
    for name, clips, what, reference in (
        ('generated', videos, 'generated', False),
        ('real_test_clips', train[:len(test)], 'training', True),
        ('uniform_noise', noise, 'noise', True)):
      rows[name]['fvd'] = frechet.frechet_distance(logits(clips, what, reference), test_logits,
                                                   i3d.NUM_CLASSES)
  if test.shape[1] != videos.shape[1]:
    rows['real_test_clips']['note'] = (f'scored on the {test.shape[1]}-frame test clips; the '
                                       f'generated clips have {videos.shape[1]} frames')
  if given_frames is not None:
    last, _, _ = scorer.read_frames(videos[:, -1])
    first, _, _ = scorer.read_frames(given_frames[:, 0])
    rows['generated']['i2v_last_frame_keeps_digits'] = float(np.mean(np.all(last == first, 1)))
  report = {'rows': rows, 'num_samples': n, 'frechet_reference_size': size,
            'scorer': {'name': scorer.cfg.name, **scorer.report}}
  return report, scores


def _format(value) -> str:
  if isinstance(value, float):
    return f'{value:.3f}'
  if isinstance(value, list):
    return '[' + ' '.join(f'{v:.2f}' for v in value) + ']'
  return str(value)


def check_fvd_sizes(num_samples: int, num_test: int, num_train: int) -> None:
  """Raises ValueError unless every FVD set has at least i3d.NUM_CLASSES clips."""
  need = i3d.NUM_CLASSES
  for what, size in (('--num_samples', num_samples), ('the test split', num_test),
                     ('the training split', num_train)):
    if size < need:
      raise ValueError(f'FVD needs at least {need} clips per set (its I3D logits are '
                       f'{need}-d); {what} has {size}')


def _labels(captions, scores) -> list[str]:
  def mark(ok):
    return '-' if ok != ok else ('ok' if ok else 'NO')  # NaN: not tracked
  return [f'{c}\n  digits {mark(p)}  motion {mark(m)}'
          for c, p, m in zip(captions, scores['prompt_correct'], scores['motion_correct'])]


def read_video_folder(directory: str, frame_shape: tuple[int, ...]) -> tuple[np.ndarray, list]:
  """(uint8 videos [N, T, H, W, 1], captions) of DIR/captions.jsonl; every bad file in one error."""
  index = os.path.join(directory, 'captions.jsonl')
  if not os.path.exists(index):
    raise FileNotFoundError(f'{index} not found: --videos needs a captions.jsonl with '
                            '{"file": ..., "caption": ...} per line')
  with open(index) as f:
    entries = [json.loads(line) for line in f if line.strip()]
  videos, captions, bad = [], [], []
  for e in entries:
    path = os.path.join(directory, e['file'])
    try:
      clip = np.load(path, allow_pickle=False) if path.endswith('.npy') else (
          video_io.read_video(path))
      if clip.ndim == 3:
        clip = clip[..., None]
      if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[1:3] != frame_shape[:2]:
        raise ValueError(f'{clip.dtype} {clip.shape}, need uint8 frames of {frame_shape[:2]}')
      grey = clip if clip.shape[-1] == 1 else np.rint(clip[..., :3].mean(-1, keepdims=True))
      videos.append(grey.astype(np.uint8))
      captions.append(e['caption'])
    except Exception as err:  # noqa: BLE001 - each bad file is reported, then one error
      bad.append(f'{e.get("file")}: {err}')
  if bad:
    raise ValueError(f'{len(bad)} of {len(entries)} videos in {directory} cannot be scored: '
                     + '; '.join(bad[:5]) + (' ...' if len(bad) > 5 else ''))
  if len({v.shape for v in videos}) > 1:
    raise ValueError(f'the videos in {directory} differ in shape: '
                     f'{sorted({v.shape for v in videos})}')
  return np.stack(videos), captions


def caption_ablation(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                     params: nnx.State, videos: np.ndarray,
                     captions: list[str]) -> dict[str, list[float]]:
  """Per-stage training loss on the test clips with own, shuffled and empty captions."""
  columns = sum(config.pyramid.sample_ratios)
  return conditioning.caption_ablation(
      config, graphdef, params, latent_codec.make_codec(config.latent), videos,
      inference.tokenize_prompts(config, captions), batch_size=columns * max(1, 48 // columns))


def main(argv):
  del argv
  workdir = _WORKDIR.value
  config = restore.load_config(workdir, _STEP.value)
  with config.unlocked():
    if _GUIDANCE.value is not None:
      config.sample.guidance_scale = _GUIDANCE.value
    if _VIDEO_GUIDANCE.value is not None:
      if not config.temporal.autoregressive:
        raise ValueError('--video_guidance_scale is for autoregressive models (the frames after '
                         'the first); this one samples whole clips with --guidance_scale')
      config.sample.video_guidance_scale = _VIDEO_GUIDANCE.value
    if _HISTORY_NOISE.value is not None:
      if not config.temporal.autoregressive:
        raise ValueError('--history_noise is for autoregressive models (their history frames)')
      config.sample.history_noise = _HISTORY_NOISE.value
    if _STEPS.value is not None:
      config.sample.steps_per_stage = tuple(int(s) for s in _STEPS.value)
    if _RENOISE.value is not None:
      config.sample.renoise = _RENOISE.value
    # A model trained on stored latents is scored against the videos they came from.
    config.data = latent_dataset.source_videos_data(config.data)
  config_lib.validate(config)
  n = _NUM_SAMPLES.value
  unknown = sorted(set(_METRICS.value) - set(METRICS))
  if unknown:
    raise ValueError(f'--metrics: unknown {unknown}; known {list(METRICS)}')
  with_fvd = 'fvd' in _METRICS.value
  if with_fvd and not _VIDEOS.value:
    check_fvd_sizes(n, config.data.test_size, config.data.train_size)
  if n < digits_lib.MIN_FRECHET_SAMPLES:
    raise ValueError(f'--num_samples {n}: the Frechet distance needs at least '
                     f'{digits_lib.MIN_FRECHET_SAMPLES} clips')
  if not _VIDEOS.value:
    steps = checkpoint.checkpoint_steps(workdir)
    if not steps or (_STEP.value is not None and _STEP.value not in steps):
      raise FileNotFoundError(f'no checkpoint {_STEP.value or ""} in {workdir}/checkpoints '
                              f'(have {steps})')
  cache_root = _SCORER_DIR.value or config.data.data_dir
  fvd_cache = os.path.join(cache_root, 'i3d_features')
  scorer = digits_lib.get_scorer(cache_root,
                                 digits_lib.scorer_config(config.data, _SCORER_STEPS.value),
                                 train_if_missing=True)
  if _VIDEOS.value:
    videos, captions = read_video_folder(_VIDEOS.value, config_lib.image_hw(config.data))
    report, scores = evaluate(config, videos, captions, scorer, with_fvd=with_fvd,
                              fvd_cache=fvd_cache)
    out = storage.path(_VIDEOS.value) / '_'.join(
        ['eval', *reports.protocol_parts(len(videos), with_fvd, _SCORER_STEPS.value)])
  else:
    test, _, _, captions = _split_arrays(config, 'test')
    if n > len(test):
      raise ValueError(f'--num_samples {n} exceeds the {len(test)} test clips')
    captions = captions[:n]
    given = test[:n, :1] if _TASK.value == 'i2v' else None
    graphdef, params, step = restore.load_params(config, workdir, _STEP.value)
    videos = generate(config, graphdef, params, captions, seed=_SEED.value,
                      batch_size=_BATCH.value, first_frames=given, num_frames=_NUM_FRAMES.value)
    report, scores = evaluate(config, videos, captions, scorer, given, with_fvd, fvd_cache)
    report.update(step=step, task=_TASK.value, seed=_SEED.value,
                  sample=config.sample.to_dict(),
                  compute=reports.compute_of(config, step, _NUM_FRAMES.value),
                  conditioning=caption_ablation(config, graphdef, params, test[:n], captions))
    out = storage.path(workdir) / 'eval' / reports.report_name(
        step, _TASK.value, _NUM_FRAMES.value, _STEPS.value and config.sample.steps_per_stage,
        _GUIDANCE.value, _RENOISE.value, _SEED.value, _VIDEO_GUIDANCE.value,
        num_samples=n, fvd=with_fvd, scorer_steps=_SCORER_STEPS.value,
        history_noise=_HISTORY_NOISE.value)
  with storage.local_file(out.parent / f'{out.name}.png') as grid:
    grid_lib.write_scored_grid(grid, videos[:GRID_ROWS], _labels(captions[:GRID_ROWS], scores))
  storage.write_text_atomic(out.parent / f'{out.name}.json', json.dumps(report, indent=1))
  for name, row in report['rows'].items():
    print(f'{name:16s} ' + '  '.join(f'{k} {_format(v)}' for k, v in row.items() if k != 'note'))
  if 'conditioning' in report:
    print('loss per stage   ' + '  '.join(
        f'{name} [{", ".join(f"{v:.4f}" for v in report["conditioning"][name])}]'
        for name in (*conditioning.CAPTION_SETS, 'text_gain')))
  print(f'wrote {out}.json and {out}.png')


if __name__ == '__main__':
  cli.run(main, user_errors=(checkpoint.CheckpointError,))
