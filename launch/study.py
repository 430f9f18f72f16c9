r"""Tables and plots of a sweep's evaluations: mean and spread over seeds.

  python launch/study.py --workdir=runs/repro --out=docs/reproduction_study

reads every run under --workdir (its config.json, metrics.jsonl and the
eval/*.json reports that `python -m pflow_jax.evaluate` wrote), groups the
reports by (pyramid stages, checkpoint step, sampling settings, clip count and
whether FVD was measured) and writes
  <out>.json     one row per group: mean, std and per-seed values of each metric;
  <out>.md       the same as a markdown table, and the paper's claim checked (`claim`)
                 within each clip count;
  <out>_training.png   Frechet distance, motion/prompt accuracy and (where measured) FVD
                       against training FLOPs;
  <out>_sampling.png   the same against sampling FLOPs per clip (last checkpoints).
Error bars are the standard deviation over seeds (ddof=1).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pflow_jax.eval import study  # noqa: E402  (the repository root is on the path above)

_WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory of the sweep\'s runs.')
_OUT = flags.DEFINE_string('out', None, 'Output path prefix (default: <workdir>/study).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  out = _OUT.value or os.path.join(_WORKDIR.value, 'study')
  sys.stdout.write(study.write_study(_WORKDIR.value, out))
  print(f'wrote {out}.json, {out}.md, {out}_training.png and {out}_sampling.png')


if __name__ == '__main__':
  app.run(main)
