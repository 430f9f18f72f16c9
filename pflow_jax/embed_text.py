r"""Embeds a dataset's captions with the released models' text encoders, for training and
sampling on precomputed text (data/text_embeddings.py).

  python -m pflow_jax.embed_text --config=configs/pyramid_flow_flux.py:384p \
      --model_path=/models/pyramid-flow-miniflux --out=data/text_384p.npz
  python -m pflow_jax.train --config=configs/pyramid_flow_flux.py:384p ... \
      --config.text.embeddings=data/text_384p.npz

--model_path is a released model folder with the encoders in the official layout:
family 'flux' reads CLIP-L (tokenizer/, text_encoder/; pooled output, 768) and
T5-XXL (tokenizer_2/, text_encoder_2/); 'sd3' reads CLIP-L and CLIP-G with
projections (pooled 768 + 1280) and T5-XXL (tokenizer_3/, text_encoder_3/). The T5
sequence is padded to text.max_length with its mask. It needs `torch` and
`transformers`, which are not in requirements.txt (pip install torch transformers).
Any other encoder works too: write the file yourself in the documented format.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from absl import flags
import numpy as np
from ml_collections import config_flags
from tqdm import tqdm

from pflow_jax import cli
from pflow_jax.data import datasets, text_embeddings

_CONFIG = config_flags.DEFINE_config_file('config', None, 'DiT config (data, text, model).',
                                          lock_config=True)
_MODEL_PATH = flags.DEFINE_string('model_path', None, 'Released model folder with the '
                                  'text encoders (official layout).')
_OUT = flags.DEFINE_string('out', None, 'The embeddings file to write (.npz).')
_SPLITS = flags.DEFINE_list('splits', ['train', 'test'], 'Dataset splits whose captions to embed.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Captions per encoder call.')
flags.mark_flags_as_required(['config', 'model_path', 'out'])

Encoder = Callable[[list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]


def official_encoder(model_path: str, family: str, max_length: int) -> Encoder:
  """encode(texts) -> (T5 seq [N, L, 4096], mask [N, L], pooled [N, P]) with transformers."""
  try:
    import torch
    import transformers
  except ImportError as e:
    raise ValueError(f'embedding captions needs torch and transformers ({e}); '
                     'pip install torch transformers') from None
  sub = lambda name: os.path.join(model_path, name)  # noqa: E731
  clips = [(transformers.CLIPTokenizer.from_pretrained(sub('tokenizer')),
            (transformers.CLIPTextModel if family == 'flux' else
             transformers.CLIPTextModelWithProjection).from_pretrained(sub('text_encoder')))]
  if family == 'sd3':
    clips.append((transformers.CLIPTokenizer.from_pretrained(sub('tokenizer_2')),
                  transformers.CLIPTextModelWithProjection.from_pretrained(sub('text_encoder_2'))))
  t5_dir = 'tokenizer_2' if family == 'flux' else 'tokenizer_3'
  t5_tokenizer = transformers.T5TokenizerFast.from_pretrained(sub(t5_dir))
  t5 = transformers.T5EncoderModel.from_pretrained(sub(t5_dir.replace('tokenizer', 'text_encoder')))

  @torch.no_grad()
  def encode(texts: list[str]):
    pooled = []
    for tokenizer, model in clips:
      ids = tokenizer(texts, padding='max_length', max_length=tokenizer.model_max_length,
                      truncation=True, return_tensors='pt').input_ids
      out = model(ids)
      pooled.append((out.pooler_output if family == 'flux' else out.text_embeds).float())
    tokens = t5_tokenizer(texts, padding='max_length', max_length=max_length, truncation=True,
                          return_tensors='pt')
    seq = t5(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return (seq.float().numpy(), tokens.attention_mask.bool().numpy(),
            torch.cat(pooled, -1).numpy())

  return encode


def dataset_captions(config, splits: list[str]) -> list[str]:
  captions = []
  for split in splits:
    source = datasets.source(config, split)
    for i in tqdm(range(len(source)), desc=f'captions ({split})', unit='clip'):
      captions.append(datasets.caption_of(source[i]))
  return captions


def main(argv):
  del argv
  config = _CONFIG.value
  if config.text.encoder != 'precomputed':
    raise ValueError(f"the config's text.encoder is {config.text.encoder!r}: it embeds its "
                     "prompts itself; embed_text serves text.encoder='precomputed'")
  captions = dataset_captions(config, _SPLITS.value)
  encode = official_encoder(_MODEL_PATH.value, config.model.family, config.text.max_length)
  count = text_embeddings.write(_OUT.value, captions, encode, _BATCH.value)
  print(f'wrote {_OUT.value}: {count} captions (of {len(captions)} clips)')


if __name__ == '__main__':
  cli.run(main)
