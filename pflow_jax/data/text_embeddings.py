"""Precomputed text embeddings of a dataset's captions (T5 / CLIP, or any encoder).

One .npz file (read without pickle) serves training and sampling:
  captions     str [N]           the captions (omitted in a sampling file)
  seq          float [N, L, D]   sequence features (model.joint_attention_dim)
  mask         bool [N, L]       true on real tokens
  pooled       float [N, P]      pooled features (model.pooled_projection_dim)
  null_seq, null_mask, null_pooled   one row: the empty prompt's, for guidance
Training (text.encoder 'precomputed', text.embeddings = the file) looks up each
clip's caption; `python -m pflow_jax.embed_text` writes the file for a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import os

import ml_collections
import numpy as np

EMBEDDING_KEYS = ('seq', 'mask', 'pooled', 'null_seq', 'null_mask', 'null_pooled')


def read(path: str, model: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The arrays of an embeddings file, their shapes checked against the model config."""
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in EMBEDDING_KEYS if k not in f.files]
    if missing:
      raise ValueError(f'{path} lacks {missing}; a text-embeddings file holds {EMBEDDING_KEYS}')
    arrays = {k: f[k] for k in f.files}
  for prefix, rows in (('', None), ('null_', 1)):
    seq, mask, pooled = (arrays[prefix + k] for k in ('seq', 'mask', 'pooled'))
    n = seq.shape[0] if seq.ndim == 3 else -1
    if (seq.ndim != 3 or seq.shape[-1] != model.joint_attention_dim
        or mask.shape != seq.shape[:2] or pooled.shape != (n, model.pooled_projection_dim)
        or (rows is not None and n != rows)):
      raise ValueError(
          f'{path}: {prefix}seq {seq.shape}, {prefix}mask {mask.shape}, {prefix}pooled '
          f'{pooled.shape} do not fit [{rows or "N"}, L, {model.joint_attention_dim}], '
          f'[.., L], [.., {model.pooled_projection_dim}] (the model\'s joint_attention_dim '
          'and pooled_projection_dim)')
    arrays[prefix + 'mask'] = mask.astype(bool)
  return arrays


class CaptionLookup:
  """caption -> its record fields text_* (and the empty prompt's null_text_*)."""

  def __init__(self, path: str, model: ml_collections.ConfigDict):
    arrays = read(path, model)
    if 'captions' not in arrays:
      raise ValueError(f'{path} has no captions: training needs the caption of every row')
    self.path = path
    self._arrays = arrays
    self._rows = {str(c): i for i, c in enumerate(arrays['captions'])}

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    row = self._rows.get(caption)
    if row is None:
      raise KeyError(f'caption {caption!r} is not in {self.path}: embed the dataset again '
                     '(python -m pflow_jax.embed_text)')
    out = {f'text_{k}': self._arrays[k][row] for k in ('seq', 'mask', 'pooled')}
    out.update({f'null_text_{k}': self._arrays[f'null_{k}'][0] for k in ('seq', 'mask', 'pooled')})
    return out


def write(path: str, captions: Sequence[str],
          encode: Callable[[list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]],
          batch_size: int = 32) -> int:
  """Embeds the unique captions (and the empty prompt) with encode(texts) -> (seq, mask,
  pooled) and writes the file; returns the number of captions."""
  unique = sorted(set(captions))
  parts = [encode(unique[i:i + batch_size]) for i in range(0, len(unique), batch_size)]
  seq, mask, pooled = (np.concatenate([p[j] for p in parts]) for j in range(3))
  null_seq, null_mask, null_pooled = encode([''])
  tmp = path + '.tmp.npz'
  np.savez(tmp, captions=np.array(unique, dtype=np.str_), seq=seq.astype(np.float32),
           mask=mask.astype(bool), pooled=pooled.astype(np.float32),
           null_seq=null_seq.astype(np.float32), null_mask=null_mask.astype(bool),
           null_pooled=null_pooled.astype(np.float32))
  os.replace(tmp, path)
  return len(unique)
