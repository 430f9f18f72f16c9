"""The moving-digits ruler: a scorer trained on train digits, checked on held-out digits and
real test clips, and `python -m pflow_jax.evaluate` on real and bad inputs."""

import glob
import json
import os

import numpy as np
import pytest

from pflow_jax.data import moving_digits, video_io
from pflow_jax.eval import digits
from tests.test_cli import run, train_args

MAIN_CONFIG = digits.ScorerConfig()  # the README job's 32 px canvas with 16 px digits
# The default run trains a shorter scorer (minutes); the slow test checks the default one.
SHORT_STEPS = 1000
SHORT_CONFIG = digits.ScorerConfig(steps=SHORT_STEPS)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def scorer(data_dir):
  """The scorer the evaluator uses, trained as `python -m pflow_jax.eval.digits --train` does."""
  return digits.get_scorer(data_dir, SHORT_CONFIG, train_if_missing=True)


@pytest.fixture(scope='module')
def test_clips(data_dir):
  cfg = moving_digits.MovingDigitsConfig(image_size=32, num_frames=4, digit_size=16,
                                         train_size=8, test_size=512)
  moving_digits.build_moving_digits(data_dir, cfg)
  source = moving_digits.load_moving_digits(data_dir, cfg, 'test')
  records = [source[i] for i in range(len(source))]
  return (np.stack([r['video'] for r in records]), np.stack([r['digits'] for r in records]),
          np.stack([r['directions'] for r in records]))


@pytest.mark.slow
def test_the_default_scorer_reads_held_out_digits_and_real_clips(tmp_path, test_clips):
  scorer = digits.get_scorer(str(tmp_path), MAIN_CONFIG, train_if_missing=True)
  report = digits.held_out_report(scorer)
  assert report['single_digit_accuracy'] >= 0.97, report  # measured 0.979
  assert report['two_digit_accuracy'] >= 0.7, report  # measured 0.74
  real = digits.summarise(scorer.score_clips(*test_clips))
  assert real['prompt_accuracy'] >= 0.87 and real['motion_accuracy'] >= 0.95, real


def test_scorer_reads_held_out_digits(scorer):
  report = digits.held_out_report(scorer)
  assert report['single_digit_accuracy'] >= digits.REQUIRED_ACCURACY, report
  assert report['two_digit_accuracy'] >= 0.4, report
  assert report['single_digit_centre_error_px'] < 1.0, report
  assert scorer.report['single_digit_accuracy'] == pytest.approx(
      report['single_digit_accuracy'])  # the saved report is what it measures


def test_real_clips_score_high_and_noise_or_wrong_prompts_low(scorer, test_clips):
  videos, d, k = test_clips
  real = digits.summarise(scorer.score_clips(videos, d, k))
  assert real['prompt_accuracy'] >= 0.6 and real['motion_accuracy'] >= 0.85, real
  # Every clip scored against another clip's prompt: the scorer reads the clips.
  shifted = digits.summarise(scorer.score_clips(videos, np.roll(d, 1, 0), np.roll(k, 1, 0)))
  assert shifted['prompt_accuracy'] < 0.15, shifted
  noise = np.random.default_rng(0).integers(0, 256, videos.shape, dtype=np.uint8)
  noisy = digits.summarise(scorer.score_clips(noise, d, k))
  assert noisy['prompt_accuracy'] < 0.1 and noisy['motion_accuracy'] < 0.5, noisy
  # Frozen frames (frame 0 repeated) keep the digits but do not move.
  frozen = digits.summarise(scorer.score_clips(np.repeat(videos[:, :1], 4, 1), d, k))
  assert frozen['motion_accuracy'] < 0.05, frozen
  # Clips that turn to noise after two frames: the per-frame accuracy says where.
  drifting = videos.copy()
  drifting[:, 2:] = noise[:, 2:]
  per_frame = digits.summarise(scorer.score_clips(drifting, d, k))['prompt_accuracy_per_frame']
  assert len(per_frame) == videos.shape[1]
  assert min(per_frame[:2]) >= 0.6 and max(per_frame[2:]) < 0.1, per_frame
  assert np.mean(real['prompt_accuracy_per_frame']) >= 0.6, real


def test_frechet_distance_of_clip_features(scorer, test_clips):
  videos, d, k = test_clips
  features = scorer.score_clips(videos, d, k)['clip_features']
  real_vs_real = digits.feature_frechet(features[:256], features[256:])
  noise = np.random.default_rng(0).integers(0, 256, videos.shape, dtype=np.uint8)
  noise_features = scorer.score_clips(noise, d, k)['clip_features']
  real_vs_noise = digits.feature_frechet(features[:256], noise_features[256:])
  assert real_vs_real < 0.1 * real_vs_noise, (real_vs_real, real_vs_noise)
  with pytest.raises(ValueError, match=f'at least {digits.MIN_FRECHET_SAMPLES}'):
    digits.feature_frechet(features[:10], features[256:])


def test_saved_scorer_loads_the_same_and_refuses_another_config(scorer, tmp_path):
  digits.save_scorer(str(tmp_path / 's'), scorer)
  loaded = digits.load_scorer(str(tmp_path / 's'), SHORT_CONFIG)
  frames, _, _ = digits.compose_frames(np.random.default_rng(3), 16, MAIN_CONFIG, 'test')
  for a, b in zip(scorer.read_frames(frames), loaded.read_frames(frames)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='was trained for'):
    digits.load_scorer(str(tmp_path / 's'), MAIN_CONFIG)


def test_the_scorer_never_sees_test_digits():
  train = set(moving_digits.source_pool('train', MAIN_CONFIG.test_fraction))
  test = set(moving_digits.source_pool('test', MAIN_CONFIG.test_fraction))
  assert not train & test
  rng = np.random.default_rng(0)
  frames, counts, _ = digits.compose_frames(rng, 4, MAIN_CONFIG, 'train', augment=True)
  assert frames.shape == (4, 32, 32, 1) and frames.dtype == np.uint8 and counts.sum() <= 8


# `python -m pflow_jax.evaluate` end to end, on a tiny trained workdir.
N = digits.MIN_FRECHET_SAMPLES  # the fewest clips the evaluator accepts

@pytest.fixture(scope='module')
def tiny_workdir(tmp_path_factory, data_dir, scorer):
  del scorer  # trained into data_dir, where the evaluator finds it
  workdir = str(tmp_path_factory.mktemp('tiny'))
  code, out = run('pflow_jax.train', *train_args(
      workdir, data_dir, '--config.data.num_frames=4', '--config.data.test_size=256',
      '--config.train.num_steps=2'))
  assert code == 0, out
  return workdir


def test_evaluate_writes_the_report_and_grid(tiny_workdir):
  code, out = run('pflow_jax.evaluate', f'--workdir={tiny_workdir}', f'--num_samples={N}',
                  '--batch_size=32', f'--scorer_steps={SHORT_STEPS}')
  assert code == 0, out
  name = os.path.join(tiny_workdir, 'eval', f'2_n{N}_scorer{SHORT_STEPS}')
  with open(name + '.json') as f:
    report = json.load(f)
  rows = report['rows']
  assert set(rows) == {'generated', 'real_test_clips', 'uniform_noise'}
  assert rows['real_test_clips']['prompt_accuracy'] >= 0.6
  assert rows['uniform_noise']['prompt_accuracy'] < 0.1
  assert rows['real_test_clips']['frechet_distance'] < rows['uniform_noise']['frechet_distance']
  assert os.path.getsize(name + '.png') > 0
  ablation = report['conditioning']
  assert set(ablation) == {'own', 'shuffled', 'empty', 'text_gain'}
  assert all(len(v) == 3 and np.all(np.isfinite(v)) for v in ablation.values())
  assert min(ablation['own']) > 0 and 'text_gain' in out
  assert report['compute']['train_flops'] > 0


def test_evaluate_with_other_sampling_settings_writes_beside_the_default_report(tiny_workdir):
  """A sampling-compute sweep of one checkpoint keeps every report (none overwritten)."""
  args = (f'--workdir={tiny_workdir}', f'--num_samples={N}', '--batch_size=32',
          f'--scorer_steps={SHORT_STEPS}')
  code, out = run('pflow_jax.evaluate', *args)
  assert code == 0, out
  default = os.path.join(tiny_workdir, 'eval', f'2_n{N}_scorer{SHORT_STEPS}.json')
  before = open(default).read()
  code, out = run('pflow_jax.evaluate', *args, '--steps_per_stage=1,1,1', '--norenoise')
  assert code == 0, out
  assert open(default).read() == before
  ablated_name = f'2_steps1-1-1_norenoise_n{N}_scorer{SHORT_STEPS}.json'
  with open(os.path.join(tiny_workdir, 'eval', ablated_name)) as f:
    ablated = json.load(f)
  reference = json.loads(before)
  assert ablated['sample']['renoise'] is False and reference['sample']['renoise'] is True
  assert ablated['compute']['train_flops'] == reference['compute']['train_flops']
  # Sampling FLOPs are linear in the Euler steps: the tiny config samples with 2 per stage.
  assert reference['sample']['steps_per_stage'] == [2, 2, 2]
  np.testing.assert_allclose(ablated['compute']['sample_flops_per_clip'],
                             reference['compute']['sample_flops_per_clip'] / 2, rtol=1e-9)


def test_evaluate_scores_a_folder_of_videos_like_the_real_clips(tiny_workdir, data_dir,
                                                                tmp_path):
  from pflow_jax import restore
  from pflow_jax.data import datasets
  config = restore.load_config(tiny_workdir)
  source = datasets.source(config, 'test')
  index = []
  for i in range(N):
    record = source[i]
    np.save(tmp_path / f'{i}.npy', np.asarray(record['video']))
    index.append({'file': f'{i}.npy', 'caption': record['caption'].decode()})
  (tmp_path / 'captions.jsonl').write_text('\n'.join(json.dumps(e) for e in index))
  code, out = run('pflow_jax.evaluate', f'--workdir={tiny_workdir}', f'--videos={tmp_path}',
                  f'--num_samples={N}', f'--scorer_steps={SHORT_STEPS}')
  assert code == 0, out
  report = json.loads((tmp_path / f'eval_n{N}_scorer{SHORT_STEPS}.json').read_text())
  rows = report['rows']
  assert rows['generated']['prompt_accuracy'] == rows['real_test_clips']['prompt_accuracy']
  assert rows['generated']['nearest_train_rms'] == pytest.approx(
      rows['real_test_clips']['nearest_train_rms'])


ONE_FLAG_CASES = {  # case: (the flag added to a valid evaluation, the expected error)
    'too_few_for_fvd': ('--metrics=digits,fvd', 'FVD needs at least 400 clips per set (its '
                        'I3D logits are 400-d); --num_samples'),
    'unknown_metric': ('--metrics=digits,fid', "--metrics: unknown ['fid']"),
    'video_guidance_of_whole_clips': ('--video_guidance_scale=2',
                                      '--video_guidance_scale is for autoregressive models'),
    'history_noise_of_whole_clips': ('--history_noise=0.1',
                                     '--history_noise is for autoregressive models'),
}


@pytest.mark.parametrize('case', ['too_few', *ONE_FLAG_CASES, 'no_checkpoint', 'unreadable',
                                  'mis_sized'])
def test_evaluate_bad_input_is_one_line_and_writes_nothing(case, tiny_workdir, tmp_path):
  args = [f'--workdir={tiny_workdir}', f'--num_samples={N}', f'--scorer_steps={SHORT_STEPS}']
  if case == 'too_few':
    args[1], message = '--num_samples=10', f'needs at least {N} clips'
  elif case in ONE_FLAG_CASES:
    flag, message = ONE_FLAG_CASES[case]
    args.append(flag)
  elif case == 'no_checkpoint':
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'config.json').write_text(open(os.path.join(tiny_workdir, 'config.json')).read())
    args[0], message = f'--workdir={empty}', 'no checkpoint'
  else:
    folder = tmp_path / 'videos'
    folder.mkdir()
    (folder / 'a.mp4').write_bytes(b'not a video')
    video_io.write_video(str(folder / 'b.gif'), np.zeros((4, 48, 48, 1), np.uint8), fps=4)
    name = 'a.mp4' if case == 'unreadable' else 'b.gif'
    (folder / 'captions.jsonl').write_text(json.dumps({'file': name, 'caption': 'a 3 moving up'}))
    args.append(f'--videos={folder}')
    message = f'cannot be scored: {name}'
  code, out = run('pflow_jax.evaluate', *args)
  assert code == 1 and message in out, out
  assert out.strip().splitlines()[-1].startswith('error: ')
  written = [p for p in tmp_path.rglob('*')
             if p.suffix in ('.json', '.png') and p.name != 'config.json']
  assert not written and not glob.glob(os.path.join(tiny_workdir, 'eval', '2_n10_*'))


def test_caption_parser_round_trips_the_dataset_captions():
  d, k = digits.parse_caption('a 0 moving right and a 1 moving up', 2)
  assert d.tolist() == [0, 1] and k.tolist() == [1, 2]
  assert moving_digits.caption_of([0, 1], [1, 2]) == 'a 0 moving right and a 1 moving up'
  with pytest.raises(ValueError, match='not of the form'):
    digits.parse_caption('a cat', 2)


def test_report_names_keep_every_sampling_setting_apart():
  from pflow_jax.eval import reports
  name = lambda **kw: reports.report_name(**{**dict(
      step=10, task='t2v', num_frames=None, steps_per_stage=None, guidance=None, renoise=None,
      seed=0), **kw})
  names = [name(), name(task='i2v'), name(num_frames=16), name(steps_per_stage=(1, 1, 1)),
           name(guidance=6.0), name(video_guidance=6.0), name(guidance=6.0, video_guidance=2.5),
           name(renoise=False), name(seed=1), name(num_samples=400), name(fvd=True),
           name(scorer_steps=100), name(history_noise=0.1)]
  assert names[0] == '10' and len(set(names)) == len(names), names
  assert names[6] == '10_cfg6_videocfg2.5'
  assert name(seed=1, num_samples=400, fvd=True) == '10_seed1_n400_fvd'
  assert name(scorer_steps=100) == '10_scorer100'
  assert name(video_guidance=2.0, history_noise=0.1) == '10_videocfg2_histnoise0.1'
