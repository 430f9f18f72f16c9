"""A sweep's evaluation reports, aggregated over seeds: tables, plots and the paper's claim.

Reads the runs under a sweep's workdir (config.json, metrics.jsonl and the
eval/*.json reports of `python -m pflow_jax.evaluate`); launch/study.py is the
command line. Error bars and spreads are standard deviations over seeds (ddof=1).
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np

from pflow_jax import storage

METRICS = ('prompt_accuracy', 'motion_accuracy', 'temporal_consistency', 'frechet_distance')
COMPUTE = ('train_flops', 'sample_flops_per_clip', 'train_seconds')
FVD = 'fvd'  # measured only by `evaluate --metrics=digits,fvd`: None in the other reports


def training_seconds(run_dir: str | os.PathLike, step: int) -> float:
  """Wall time of training to `step` (compilation included, sampling excluded), from the
  steps/s of each logged window in metrics.jsonl (a step inside a window counts its share)."""
  seconds, last = 0.0, 0
  for line in (storage.path(run_dir) / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    if 'steps_per_sec' not in record:
      continue
    end = min(record['step'], step)
    seconds += (end - last) / record['steps_per_sec']
    last = end
    if last == step:
      return seconds
  raise ValueError(f'{run_dir}/metrics.jsonl ends before step {step}')


def history_of(config: dict) -> str:
  """How an autoregressive run keeps its history frames ('compressed': the temporal
  pyramid, 'full': at the target's resolution); '-' for a run that is not autoregressive."""
  temporal = config.get('temporal', {})
  if not temporal.get('autoregressive', False):
    return '-'
  return 'compressed' if temporal.get('compress_history', True) else 'full'


def load_reports(workdir: str) -> list[dict]:
  """One record per evaluation report of every run under workdir."""
  records = []
  for config_path in sorted(storage.path(workdir).glob('*/config.json')):
    run_dir = config_path.parent
    config = json.loads(config_path.read_text())
    for path in sorted((run_dir / 'eval').glob('*.json')):
      report = json.loads(path.read_text())
      if 'compute' not in report:
        raise ValueError(f'{path} predates the compute field: rerun its evaluation')
      sample = report['sample']
      generated = report['rows']['generated']
      records.append({
          'run': run_dir.name, 'seed': config['seed'],
          'stages': config['pyramid']['stages'], 'history': history_of(config),
          'step': report['step'],
          'task': report['task'], 'steps_per_stage': tuple(sample['steps_per_stage']),
          'guidance_scale': sample['guidance_scale'], 'renoise': sample.get('renoise', True),
          'num_samples': report['num_samples'],
          **{m: generated[m] for m in METRICS},
          FVD: generated.get(FVD),
          **report['compute'],
          'train_seconds': training_seconds(run_dir, report['step']),
          'real_frechet_distance': report['rows']['real_test_clips']['frechet_distance'],
          'real_fvd': report['rows']['real_test_clips'].get(FVD),
      })
  if not records:
    raise FileNotFoundError(f'no evaluation reports under {workdir}/*/eval/')
  return records


def _stats(values: list[float]) -> dict:
  values = [float(v) for v in values]
  return {'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          'values': values}


def protocol(row: dict) -> tuple[int, bool]:
  """How a report was measured: its clip count and whether it has FVD. Reports of one
  checkpoint under two protocols are kept apart, never averaged or compared."""
  return row['num_samples'], row[FVD] is not None


def summarise(records: list[dict]) -> list[dict]:
  """Groups records by setting and protocol; mean, std and values over seeds of each metric
  (FVD and its real-data reference None where the group's reports did not measure it)."""
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r['stages'], r['history'], r['step'], r['task'], r['steps_per_stage'],
            r['guidance_scale'], r['renoise'], *protocol(r))].append(r)
  rows = []
  for key in sorted(groups):
    members = sorted(groups[key], key=lambda r: r['seed'])
    seeds = [r['seed'] for r in members]
    if len(set(seeds)) != len(seeds):
      raise ValueError(f'setting {key} has two reports for one seed: {seeds}')
    stages, history, step, task, per_stage, guidance, renoise, num_samples, with_fvd = key
    rows.append({'stages': stages, 'history': history, 'step': step, 'task': task,
                 'steps_per_stage': list(per_stage), 'guidance_scale': guidance,
                 'renoise': renoise, 'num_samples': num_samples, 'seeds': seeds,
                 **{m: _stats([r[m] for r in members]) for m in METRICS + COMPUTE},
                 'real_frechet_distance': _stats([r['real_frechet_distance'] for r in members]),
                 **{m: _stats([r[m] for r in members]) if with_fvd else None
                    for m in (FVD, 'real_fvd')}})
  return rows


def _line(row: dict) -> tuple[int, str]:
  """The trained setting a row belongs to: its pyramid stages and history."""
  return row['stages'], row['history']


def _label(line: tuple[int, str]) -> str:
  stages, history = line
  return f'K = {stages}' + ('' if history == '-' else f', {history} history')


def _default_sampling(row: dict, rows: list[dict]) -> bool:
  """Whether a row samples as its runs were configured (renoise on, most Euler steps)."""
  most = max(sum(r['steps_per_stage']) for r in rows if _line(r) == _line(row))
  return row['renoise'] and sum(row['steps_per_stage']) == most


def claim(rows: list[dict]) -> list[dict]:
  """The paper's efficiency claim, checked within each protocol (clip count, FVD or not):
  the largest K at <= 0.5x the training FLOPs and at <= 0.45x the sampling FLOPs of K = 1
  (its last checkpoint, default sampling), each against that K = 1 row."""
  result = []
  for measured in sorted({protocol(r) for r in rows}):
    result += _claim_within([r for r in rows if protocol(r) == measured])
  return result


def _claim_within(rows: list[dict]) -> list[dict]:
  t2v = [r for r in rows if r['task'] == 't2v']
  baselines = [r for r in t2v if r['stages'] == 1 and _default_sampling(r, rows)]
  top = max((r['stages'] for r in t2v), default=1)
  if not baselines or top == 1:
    return []
  base = max(baselines, key=lambda r: r['step'])
  pyramid = [r for r in t2v if r['stages'] == top and r['renoise']]
  last = max(r['step'] for r in pyramid)
  candidates = {
      'training': ([r for r in pyramid if _default_sampling(r, rows)], 'train_flops', 0.5),
      'sampling': ([r for r in pyramid if r['step'] == last], 'sample_flops_per_clip', 0.45)}
  metrics = METRICS + ((FVD,) if base[FVD] is not None else ())
  result = []
  for what, (chosen, key, bound) in candidates.items():
    within = [r for r in chosen if r[key]['mean'] <= bound * base[key]['mean'] * (1 + 1e-3)]
    if not within:
      continue
    best = max(within, key=lambda r: r[key]['mean'])  # the most compute within the bound
    result.append({
        'compute': what, 'bound': bound, 'ratio': best[key]['mean'] / base[key]['mean'],
        'num_samples': base['num_samples'],
        'pyramid': {'stages': top, 'step': best['step'],
                    'steps_per_stage': best['steps_per_stage']},
        'baseline': {'stages': 1, 'step': base['step'], 'steps_per_stage': base['steps_per_stage']},
        **{m: {'pyramid': best[m], 'baseline': base[m]} for m in metrics}})
  return result


def _cell(stat: dict | None, digits: int) -> str:
  return '-' if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(rows: list[dict]) -> str:
  lines = ['| K | history | step | Euler steps | renoise | seeds | clips | train TFLOPs | '
           'train min | sample GFLOPs/clip | prompt acc. | motion acc. | consistency | '
           'Frechet | FVD |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(
        f"| {r['stages']} | {r['history']} | {r['step']} | "
        f"{'+'.join(map(str, r['steps_per_stage']))} | "
        f"{'on' if r['renoise'] else 'off'} | {len(r['seeds'])} | {r['num_samples']} | "
        f"{r['train_flops']['mean'] / 1e12:.1f} | {r['train_seconds']['mean'] / 60:.1f} | "
        f"{r['sample_flops_per_clip']['mean'] / 1e9:.2f} | {_cell(r['prompt_accuracy'], 3)} | "
        f"{_cell(r['motion_accuracy'], 3)} | {_cell(r['temporal_consistency'], 3)} | "
        f"{_cell(r['frechet_distance'], 1)} | {_cell(r[FVD], 1)} |")
  return '\n'.join(lines) + '\n'


def claim_markdown(checks: list[dict]) -> str:
  lines = ['| K = 3 vs K = 1 at | clips | compute ratio | metric | pyramid | full resolution |',
           '|---|---|---|---|---|---|']
  for c in checks:
    for m in ('prompt_accuracy', 'motion_accuracy', 'frechet_distance', FVD):
      if m not in c:
        continue
      digits = 3 if m.endswith('accuracy') else 1
      lines.append(f"| {c['compute']} <= {c['bound']}x | {c['num_samples']} | "
                   f"{c['ratio']:.3f} | {m} | {_cell(c[m]['pyramid'], digits)} | "
                   f"{_cell(c[m]['baseline'], digits)} |")
  return '\n'.join(lines) + '\n'


def _most_measured(rows: list[dict]) -> list[dict]:
  """The rows of the protocol that measured the most settings (ties: more clips, then FVD),
  so that one plot never mixes clip counts."""
  counts = collections.Counter(map(protocol, rows))
  measured = max(counts, key=lambda p: (counts[p], p))
  return [r for r in rows if protocol(r) == measured]


def plot(rows: list[dict], x_key: str, select, path: str, xlabel: str) -> None:
  """Frechet distance, the two accuracies and, where measured, FVD against x_key, one line
  per K (and history), each panel from one protocol (its clip count in the title)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  digits_rows = _most_measured(rows)
  panels = [('frechet_distance', 'real_frechet_distance', 'Frechet distance (lower is better)',
             digits_rows),
            ('motion_accuracy', None, 'motion accuracy', digits_rows),
            ('prompt_accuracy', None, 'prompt accuracy', digits_rows)]
  fvd_rows = [r for r in rows if r[FVD] is not None]
  if fvd_rows:
    panels.append((FVD, 'real_fvd', 'FVD (lower is better)', _most_measured(fvd_rows)))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
  for ax, (metric, reference, title, members) in zip(axes, panels):
    for line in sorted({_line(r) for r in members}):
      chosen = sorted((r for r in members if _line(r) == line and select(r)),
                      key=lambda r: r[x_key]['mean'])
      if chosen:
        ax.errorbar([r[x_key]['mean'] for r in chosen], [r[metric]['mean'] for r in chosen],
                    [r[metric]['std'] for r in chosen], marker='o', capsize=3,
                    label=_label(line))
    if reference:
      ax.axhline(np.mean([r[reference]['mean'] for r in members]), color='grey',
                 linestyle='--', label='real vs real')
    ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_title(f"{title}, {members[0]['num_samples']} clips", fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_study(workdir: str, out: str) -> str:
  """Writes <out>.json, <out>.md, <out>_training.png and <out>_sampling.png from the reports
  under workdir; returns the markdown."""
  records = load_reports(workdir)
  rows = summarise(records)
  checks = claim(rows)
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump({'workdir': workdir, 'reports': len(records), 'rows': rows, 'claim': checks}, f,
              indent=1)
  table = markdown(rows) + ('\n' + claim_markdown(checks) if checks else '')
  with open(out + '.md', 'w') as f:
    f.write(table)
  last_step = {k: max(r['step'] for r in rows if _line(r) == k) for k in map(_line, rows)}
  plot(rows, 'train_flops', lambda r: _default_sampling(r, rows) and r['task'] == 't2v',
       out + '_training.png', 'training FLOPs')
  plot(rows, 'sample_flops_per_clip',
       lambda r: r['renoise'] and r['step'] == last_step[_line(r)] and r['task'] == 't2v',
       out + '_sampling.png', 'sampling FLOPs per clip')
  return table
