"""Real videos: a folder of video files plus a JSONL of captions -> fixed-size clips (tfds).

Annotations: one JSON object per line, as in the official `annotation/video_text.jsonl`.
The video path is read from the key `video` (the official name) or `path`; the
caption from `text` (official) or `caption`; the first key present wins and
other keys (the official `latent`, `text_fea`, ...) are ignored. A relative path
is relative to the folder, an absolute one is used as is. Blank lines are ignored.

Clips: each video is decoded with PyAV (any container/codec FFmpeg reads: mp4,
avi, webm, mkv, mov, ...). A display rotation (phone videos) is applied. Frames
are resampled to `fps` by timestamps: the clip frame at time t (seconds after the
video's first frame) is the decoded frame whose timestamp is nearest to t (the
earlier one on a tie), so fps=5 on a 25 fps source picks every 5th frame. Clip j
covers times j * num_frames / fps + k / fps, k < num_frames (consecutive,
non-overlapping clips); a time past the last frame by more than half a frame
interval does not exist, and a clip needing one is not made. Every frame is
resized (bicubic, antialiased) by the one factor that makes it cover
height x width (for a square target: the short side becomes the size), then
center-cropped to height x width, so any resolution or orientation works.

Records, under `data_dir/video_folder/<config name>/<version>` (ArrayRecord, no TF):
  video       uint8 [num_frames, height, width, 3]
  caption     string Tensor (a `bytes` object when read)
  source      string Tensor: the video path as written in the annotations
  start_time  float32: the clip's first time, in seconds after the first frame
in annotation order, one split 'train'. The config name encodes every setting
(a readable prefix plus a hash of all fields), so a changed setting builds a new
dataset. A build also records the annotation file's hash and refuses to reuse a
dataset built from different annotations (edits to the video files themselves
are not detected).

Robustness: a missing file, an unreadable or corrupt file, a file with no video
stream, a video too short for one clip, and a bad annotation line are skipped,
logged and listed with their reason in an `IngestReport`, saved as
`ingest_report.json` in the dataset directory. A video either gives all its
clips or is skipped (its clips are held in memory until its last one decodes).

  python -m pflow_jax.data.video_folder --folder=videos --annotations=videos/captions.jsonl \
      --data_dir=data --num_frames=16 --fps=8 --size=256        # or --size=256x448 (HxW)
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
import concurrent.futures
import dataclasses
from fractions import Fraction
import hashlib
import json
import os
import re
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
import av
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from pflow_jax.data import pipeline

DATASET_NAME = 'video_folder'
# Bump when the ingest code changes what a config produces.
VERSION = '1.0.0'
SPLITS = ('train',)
REPORT_FILE = 'ingest_report.json'
ALL_CLIPS = 0  # clips_per_video value: every non-overlapping clip of each video
PATH_KEYS = ('video', 'path')
TEXT_KEYS = ('text', 'caption')

# Skip reasons: a report entry's reason is '<one of these>' or '<one of these>: <detail>'.
MISSING = 'missing file'
UNREADABLE = 'unreadable'
NO_VIDEO_STREAM = 'no video stream'
TOO_SHORT = 'too short'
BAD_LINE = 'bad annotation line'
# What PyAV/FFmpeg raise on a bad file (its errors subclass these too).
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


@dataclasses.dataclass(frozen=True)
class VideoFolderConfig:
  """Every setting that decides the content of the dataset.

  `width=None` means a square target (width = height). `clips_per_video` is the
  number of consecutive clips taken from the start of each video (1: the first
  clip only); 'all' or ALL_CLIPS (0) takes every non-overlapping clip.
  Paths are made absolute, so one folder spelled two ways is one dataset.
  """
  folder: str
  annotations: str
  num_frames: int = 16
  fps: float = 8.0
  height: int = 256
  width: int | None = None
  clips_per_video: int | str = 1

  def __post_init__(self):
    def set_(name, value):  # the dataclass is frozen
      object.__setattr__(self, name, value)

    set_('folder', os.path.abspath(os.fspath(self.folder)))
    set_('annotations', os.path.abspath(os.fspath(self.annotations)))
    set_('width', self.height if self.width is None else self.width)
    for name in ('num_frames', 'height', 'width'):
      set_(name, int(getattr(self, name)))
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    set_('fps', float(self.fps))
    if not 0 < self.fps < float('inf'):
      raise ValueError(f'fps must be positive and finite, got {self.fps}')
    clips = self.clips_per_video
    if isinstance(clips, str):
      if clips.strip().lower() == 'all':
        clips = ALL_CLIPS
      elif clips.strip().isdigit():
        clips = int(clips)
      else:
        raise ValueError(f"clips_per_video must be a count >= 1 or 'all', got {clips!r}")
    if int(clips) != clips or clips < 0:
      raise ValueError(f"clips_per_video must be a count >= 1 or 'all' ({ALL_CLIPS}), "
                       f'got {clips!r}')
    set_('clips_per_video', int(clips))

  @property
  def name(self) -> str:
    """Dataset config name: readable main fields plus a hash of all fields."""
    fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
    digest = hashlib.sha256(fields.encode()).hexdigest()[:10]
    folder = re.sub(r'[^A-Za-z0-9_-]+', '-', os.path.basename(self.folder))[:32] or 'root'
    fps = f'{self.fps:g}'.replace('.', 'p')
    clips = 'all' if self.clips_per_video == ALL_CLIPS else self.clips_per_video
    return (f'{folder}_{self.num_frames}f_{fps}fps_{self.height}x{self.width}_{clips}clips_'
            f'{digest}')


@dataclasses.dataclass
class IngestReport:
  """What a build kept and skipped. `skipped` holds (path, reason) pairs.

  For a bad annotation line the path is '<annotations file>:<line number>'; for a
  video it is the path as written in the annotations.
  """
  folder: str
  annotations: str
  annotations_sha256: str
  num_lines: int = 0   # non-blank annotation lines
  num_videos: int = 0  # videos that gave clips
  num_clips: int = 0
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  @property
  def skipped_by_reason(self) -> dict[str, int]:
    """Count of skipped entries per reason category (MISSING, UNREADABLE, ...)."""
    return dict(collections.Counter(reason.split(':', 1)[0] for _, reason in self.skipped))

  def summary(self) -> str:
    reasons = ', '.join(f'{k}: {v}' for k, v in sorted(self.skipped_by_reason.items()))
    return (f'{self.num_clips} clips from {self.num_videos} videos; {len(self.skipped)} of '
            f'{self.num_lines} annotation lines skipped' + (f' ({reasons})' if reasons else ''))

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['skipped'] = [list(entry) for entry in self.skipped]
    out['skipped_by_reason'] = self.skipped_by_reason
    return out

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> IngestReport:
    fields = {f.name for f in dataclasses.fields(cls)}
    report = cls(**{k: v for k, v in data.items() if k in fields})
    report.skipped = [tuple(entry) for entry in report.skipped]
    return report


class NoClipsError(ValueError):
  """No clip survived ingest; `report` says why each video was skipped."""

  def __init__(self, report: IngestReport):
    details = '; '.join(f'{path}: {reason}' for path, reason in report.skipped[:20])
    more = f'; ... {len(report.skipped) - 20} more' if len(report.skipped) > 20 else ''
    super().__init__(f'no clip survived ingest of folder {report.folder} with annotations '
                     f'{report.annotations}: {report.summary()}. Skipped: {details}{more}')
    self.report = report


def resize_and_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] -> [height, width, 3]: bicubic resize to cover, then center crop.

  The one scale factor max(height / h, width / w) keeps the aspect ratio; the
  crop drops floor(excess / 2) rows/columns before and the rest after.
  """
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3 or 0 in frame.shape:
    raise ValueError(f'frame must be uint8 [h, w, 3], got {frame.dtype} {frame.shape}')
  h, w, _ = frame.shape
  scale = max(height / h, width / w)
  size_h, size_w = max(height, round(h * scale)), max(width, round(w * scale))
  if (size_h, size_w) != (h, w):
    image = Image.fromarray(np.ascontiguousarray(frame))
    frame = np.asarray(image.resize((size_w, size_h), Image.Resampling.BICUBIC))
  top, left = (size_h - height) // 2, (size_w - width) // 2
  return frame[top:top + height, left:left + width]


class ClipSampler:
  """Streams (timestamp, frame) pairs in presentation order; collects resampled clips.

  Target time m (m = 0, 1, ...) is first_timestamp + m / fps; its frame is the
  one with the nearest timestamp (the earlier on a tie). A target is settled as
  soon as a frame past the midpoint arrives; at the end, targets within half the
  last frame interval of the last frame take it. `convert` maps a chosen frame
  to its stored form, once per frame.
  """

  def __init__(self, fps: float, num_frames: int, max_clips: int | None,
               convert: Callable[[Any], np.ndarray]):
    self._fps = Fraction(fps).limit_denominator(1_000_000)
    self._num_frames = num_frames
    self._max_clips = max_clips
    self._convert = convert
    self._first = None
    self._last = None   # (timestamp, frame) of the newest frame
    self._interval = Fraction(0)  # between the two newest frames
    self._target = 0    # index m of the next unsettled target time
    self._chosen = None  # (frame, converted) of the latest chosen frame
    self._clip = []
    self.clips: list[tuple[float, np.ndarray]] = []  # (start time, [T, ...] frames)
    self.num_frames_seen = 0

  @property
  def done(self) -> bool:
    return self._max_clips is not None and len(self.clips) >= self._max_clips

  def add(self, timestamp: Fraction, frame: Any) -> bool:
    """Feeds the next frame; returns True once every wanted clip is complete."""
    if self._first is None:
      self._first = timestamp
    elif timestamp <= self._last[0]:
      raise ValueError(f'frame timestamps do not increase ({float(timestamp):.4f} s after '
                       f'{float(self._last[0]):.4f} s)')
    else:
      self._interval = timestamp - self._last[0]
      self._settle_until((self._last[0] + timestamp) / 2)
    self._last = (timestamp, frame)
    self.num_frames_seen += 1
    return self.done

  def finish(self) -> list[tuple[float, np.ndarray]]:
    """Settles the targets the last frame covers; returns the complete clips."""
    if self._last is not None:
      self._settle_until(self._last[0] + self._interval / 2)
    return self.clips

  @property
  def duration(self) -> float:
    """Seconds from the first to the last frame seen."""
    return 0.0 if self._last is None else float(self._last[0] - self._first)

  def _settle_until(self, limit: Fraction) -> None:
    while not self.done and self._first + self._target / self._fps <= limit:
      frame = self._last[1]
      if self._chosen is None or self._chosen[0] is not frame:
        self._chosen = (frame, self._convert(frame))
      self._clip.append(self._chosen[1])
      self._target += 1
      if len(self._clip) == self._num_frames:
        start = float((self._target - self._num_frames) / self._fps)
        self.clips.append((start, np.stack(self._clip)))
        self._clip = []


class _Skip(Exception):
  """A video that gives no clip, with its report reason."""


def _frame_time(frame: av.VideoFrame, index: int, stream) -> Fraction:
  if frame.pts is not None and frame.time_base is not None:
    return frame.pts * Fraction(frame.time_base)
  rate = stream.average_rate or stream.guessed_rate  # no timestamps: assume constant rate
  if not rate:
    raise _Skip(f'{UNREADABLE}: frames have no timestamps and the stream no frame rate')
  return index / Fraction(rate)


def _to_clip_frame(frame: av.VideoFrame, cfg: VideoFolderConfig) -> np.ndarray:
  rgb = frame.to_ndarray(format='rgb24')
  quarter_turns = round((frame.rotation or 0) / 90) % 4  # counterclockwise, as np.rot90
  return resize_and_crop(np.rot90(rgb, quarter_turns), cfg.height, cfg.width)


def decode_clips(path: str, cfg: VideoFolderConfig) -> list[tuple[float, np.ndarray]]:
  """(start time, uint8 [num_frames, height, width, 3]) clips of one video file.

  Raises `_Skip` with the report reason when the file gives no clip.
  """
  if not os.path.exists(path):
    raise _Skip(MISSING)
  if not os.path.isfile(path):
    raise _Skip(f'{MISSING}: not a regular file')
  max_clips = None if cfg.clips_per_video == ALL_CLIPS else cfg.clips_per_video
  sampler = ClipSampler(cfg.fps, cfg.num_frames, max_clips, lambda f: _to_clip_frame(f, cfg))
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise _Skip(NO_VIDEO_STREAM)
      stream = container.streams.video[0]
      stream.thread_type = 'AUTO'
      for index, frame in enumerate(container.decode(stream)):
        if sampler.add(_frame_time(frame, index, stream), frame):
          break
  except _DECODE_ERRORS as e:
    raise _Skip(f'{UNREADABLE}: {type(e).__name__}: {e}') from None
  clips = sampler.finish()
  if sampler.num_frames_seen == 0:
    raise _Skip(f'{UNREADABLE}: no frame could be decoded')
  if not clips:
    need = (cfg.num_frames - 1) / cfg.fps
    raise _Skip(f'{TOO_SHORT}: {sampler.num_frames_seen} frames over {sampler.duration:.3f} s; '
                f'a clip of {cfg.num_frames} frames at {cfg.fps:g} fps spans {need:.3f} s')
  return clips


class _Entry(NamedTuple):
  line: int      # 1-based line number in the annotation file
  path: str      # as written
  resolved: str  # absolute
  text: str


def parse_annotations(data: bytes, folder: str
                      ) -> tuple[list[_Entry], list[tuple[int, str]], int]:
  """Annotation file bytes -> (entries, bad lines as (line number, reason), non-blank lines)."""
  entries, bad, num_lines = [], [], 0
  for number, raw in enumerate(data.split(b'\n'), start=1):
    if not raw.strip():
      continue
    num_lines += 1
    try:
      item = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      bad.append((number, f'{BAD_LINE}: invalid JSON ({e})'))
      continue
    if not isinstance(item, dict):
      bad.append((number, f'{BAD_LINE}: not a JSON object'))
      continue
    path = next((item[k] for k in PATH_KEYS if k in item), None)
    text = next((item[k] for k in TEXT_KEYS if k in item), None)
    if not isinstance(path, str) or not path:
      bad.append((number, f'{BAD_LINE}: no video path string under {" or ".join(PATH_KEYS)}'))
    elif not isinstance(text, str):
      bad.append((number, f'{BAD_LINE}: no caption string under {" or ".join(TEXT_KEYS)}'))
    else:
      entries.append(_Entry(number, path, os.path.join(folder, path), text))
  return entries, bad, num_lines


def _ingest(entry: _Entry, cfg: VideoFolderConfig) -> list[tuple[float, np.ndarray]] | str:
  """Clips of one annotated video, or its skip reason."""
  try:
    return decode_clips(entry.resolved, cfg)
  except _Skip as e:
    return str(e)


def _ordered_map(fn: Callable[[_Entry], Any], entries: Iterable[_Entry],
                 num_workers: int) -> Iterator[tuple[_Entry, Any]]:
  """(entry, fn(entry)) in input order; decodes up to `num_workers` videos at once."""
  if num_workers <= 1:
    yield from ((e, fn(e)) for e in entries)
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for entry in entries:
      pending.append((entry, pool.submit(fn, entry)))
      if len(pending) >= 2 * num_workers:  # bounded read-ahead: bounded memory
        e, future = pending.popleft()
        yield e, future.result()
    while pending:
      e, future = pending.popleft()
      yield e, future.result()


class _ReportFile(tfds.core.Metadata):
  """The ingest report as tfds metadata, so it is written with the dataset, atomically."""

  def save_metadata(self, data_dir):
    (epath.Path(data_dir) / REPORT_FILE).write_text(json.dumps(dict(self), indent=1))

  def load_metadata(self, data_dir):
    self.clear()
    self.update(json.loads((epath.Path(data_dir) / REPORT_FILE).read_text()))


@dataclasses.dataclass(eq=False)
class _BuilderConfig(tfds.core.BuilderConfig):
  video: VideoFolderConfig | None = None


class _VideoFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """tfds builder; the config (and so the on-disk name) carries every setting."""

  name = DATASET_NAME
  VERSION = tfds.core.Version(VERSION)
  url_infos = None  # nothing to download (and no checksums file lookup)

  def __init__(self, *, cfg: VideoFolderConfig, data_dir: str, annotation_bytes: bytes,
               num_workers: int):
    self._annotation_bytes = annotation_bytes
    self._num_workers = num_workers
    super().__init__(data_dir=data_dir, file_format='array_record',
                     config=_BuilderConfig(name=cfg.name, video=cfg,
                                           description=json.dumps(dataclasses.asdict(cfg))))

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config.video
    features = tfds.features.FeaturesDict({
        'video': tfds.features.Tensor(shape=(cfg.num_frames, cfg.height, cfg.width, 3),
                                      dtype=np.uint8),
        'caption': tfds.features.Tensor(shape=(), dtype=np.str_),
        'source': tfds.features.Tensor(shape=(), dtype=np.str_),
        'start_time': tfds.features.Tensor(shape=(), dtype=np.float32),
    })
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                 metadata=_ReportFile())

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    cfg = self.builder_config.video
    entries, bad_lines, num_lines = parse_annotations(self._annotation_bytes, cfg.folder)
    skipped = [(line, f'{cfg.annotations}:{line}', reason) for line, reason in bad_lines]
    for _, where, reason in skipped:
      logging.warning('skipped %s: %s', where, reason)
    num_videos = num_clips = 0
    for entry, result in _ordered_map(lambda e: _ingest(e, cfg), entries, self._num_workers):
      if isinstance(result, str):
        logging.warning('skipped %s: %s', entry.path, result)
        skipped.append((entry.line, entry.path, result))
        continue
      num_videos += 1
      for i, (start, video) in enumerate(result):
        num_clips += 1
        yield f'{entry.line:010d}_{i:06d}', {'video': video, 'caption': entry.text,
                                             'source': entry.path,
                                             'start_time': np.float32(start)}
    report = IngestReport(cfg.folder, cfg.annotations, _sha256(self._annotation_bytes),
                          num_lines=num_lines, num_videos=num_videos, num_clips=num_clips,
                          skipped=[(where, reason) for _, where, reason in sorted(skipped)])
    if num_clips == 0:
      raise NoClipsError(report)
    self.info.metadata.update(report.to_json())


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def dataset_dir(data_dir: str, cfg: VideoFolderConfig) -> str:
  """Where the dataset for `cfg` lives (or will live) under `data_dir`."""
  return os.path.join(data_dir, DATASET_NAME, cfg.name, VERSION)


def read_report(path: str) -> IngestReport:
  """The ingest report saved in a built dataset directory."""
  report_path = os.path.join(path, REPORT_FILE)
  if not os.path.exists(report_path):
    raise FileNotFoundError(f'no {REPORT_FILE} in {path}: not a video-folder dataset built '
                            'by build_video_folder')
  with open(report_path) as f:
    return IngestReport.from_json(json.load(f))


def build_video_folder(data_dir: str, cfg: VideoFolderConfig,
                       num_workers: int = 1) -> tuple[str, IngestReport]:
  """Builds the dataset once (skipped when present); returns (its directory, report).

  `num_workers` videos are decoded at once (threads; the content does not
  depend on it). Raises NoClipsError (nothing written) when no clip survives,
  and ValueError when a dataset exists for `cfg` but was built from different
  annotations. In a multi-process job call it from one process only.
  """
  if not os.path.isdir(cfg.folder):
    raise FileNotFoundError(f'video folder {cfg.folder} does not exist')
  if not os.path.isfile(cfg.annotations):
    raise FileNotFoundError(f'annotation file {cfg.annotations} does not exist')
  if num_workers < 1:
    raise ValueError(f'num_workers must be >= 1, got {num_workers}')
  with open(cfg.annotations, 'rb') as f:
    annotation_bytes = f.read()  # read once: the hash and the build see the same lines
  path = dataset_dir(data_dir, cfg)
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    _VideoFolder(cfg=cfg, data_dir=data_dir, annotation_bytes=annotation_bytes,
                 num_workers=num_workers).download_and_prepare()
  report = read_report(path)
  if report.annotations_sha256 != _sha256(annotation_bytes):
    raise ValueError(f'the dataset at {path} was built from a different version of '
                     f'{cfg.annotations}; delete it to rebuild, or keep it and the old file')
  return path, report


def load_video_folder(data_dir: str, cfg: VideoFolderConfig, split: str = 'train'):
  """Random-access source of a built split, for `pipeline.make_iterator`.

  Needs only the built dataset, not the videos. FileNotFoundError naming the
  path if it was not built.
  """
  if split not in SPLITS:
    raise ValueError(f'unknown split {split!r}; a video-folder dataset has {SPLITS}')
  path = dataset_dir(data_dir, cfg)
  try:
    return pipeline.load_source(path, split)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{e}. Build it with build_video_folder() or `python -m '
                            f'pflow_jax.data.video_folder --data_dir={data_dir}` and the '
                            'same settings') from None


def parse_size(size: str) -> tuple[int, int]:
  """'256' -> (256, 256); '240x320' -> (240, 320) as (height, width)."""
  match = re.fullmatch(r'\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?', size)
  if not match:
    raise ValueError(f"size must be 'S' (square) or 'HxW', got {size!r}")
  height = int(match.group(1))
  return height, int(match.group(2) or height)


def _main(argv) -> None:
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments {argv[1:]}')
  f = flags.FLAGS
  height, width = parse_size(f.size)
  cfg = VideoFolderConfig(folder=f.folder, annotations=f.annotations, num_frames=f.num_frames,
                          fps=f.fps, height=height, width=width,
                          clips_per_video=f.clips_per_video)
  path, report = build_video_folder(f.data_dir, cfg, num_workers=f.num_workers)
  print(f'dataset: {path}')
  print(f'report: {os.path.join(path, REPORT_FILE)}')
  print(report.summary())


def _define_flags() -> None:
  flags.DEFINE_string('folder', None, 'Folder of video files.', required=True)
  flags.DEFINE_string('annotations', None, 'JSONL of {"video": path, "text": caption}.',
                      required=True)
  flags.DEFINE_string('data_dir', None, 'Root directory of tfds datasets.', required=True)
  flags.DEFINE_integer('num_frames', 16, 'Frames per clip.')
  flags.DEFINE_float('fps', 8.0, 'Clip frame rate (frames are resampled by timestamp).')
  flags.DEFINE_string('size', '256', "Clip size: 'S' (square) or 'HxW'.")
  flags.DEFINE_string('clips_per_video', '1', "Clips per video from its start, or 'all'.")
  flags.DEFINE_integer('num_workers', 1, 'Videos decoded at once (threads).')


if __name__ == '__main__':
  _define_flags()  # only here: importing the module must not define global flags
  app.run(_main)
