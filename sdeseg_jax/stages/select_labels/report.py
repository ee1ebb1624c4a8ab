"""The selection's report: per step the chosen ids and their terms, class pixel frequencies of
the selection vs the whole training set, and the plot of them (the paper's Fig. 7)."""

from __future__ import annotations

import os

import jax
import numpy as np

from data_pipelines import files
from data_pipelines import statistics
from data_pipelines.datasets import common
from sdeseg_jax import artifacts


def write_json(path: str, value) -> None:
  """Atomic write (process 0 only): a reader never sees a half-written file."""
  if jax.process_index() != 0:
    return
  files.write_json(path, value)


def class_frequency_report(whole: dict, index: common.ExampleIndex, spec: common.LabelSpec,
                           rows) -> dict:
  """Class pixel frequencies of index's `rows` vs `whole` (data.class_frequencies of the whole
  set), and their ratio."""
  chosen = statistics.class_frequencies(index.subset(np.sort(rows)), spec, max_labels=len(rows))
  ratio = {name: (chosen[name] / whole[name] if whole[name] > 0 else None)
           for name in spec.class_names}
  return dict(selection={n: chosen[n] for n in spec.class_names},
              whole={n: whole[n] for n in spec.class_names}, ratio=ratio)


def plot_class_frequencies(frequencies: dict, title: str, path: str) -> None:
  """A bar plot (log scale) of each class's pixel frequency in the selection and the whole set,
  with the ratio below (the paper's Fig. 7)."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  names = list(frequencies['whole'])
  x = np.arange(len(names))
  figure, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                       gridspec_kw=dict(height_ratios=(2, 1)))
  def heights(values):  # a class absent from a set has no bar (log axis)
    return [values[n] if values[n] > 0 else np.nan for n in names]
  top.bar(x - 0.2, heights(frequencies['whole']), 0.4, label='whole set')
  top.bar(x + 0.2, heights(frequencies['selection']), 0.4, label='selection')
  top.set_yscale('log')
  top.set_ylabel('pixel frequency')
  top.set_title(title)
  top.legend()
  ratios = [np.nan if frequencies['ratio'][n] is None else frequencies['ratio'][n] for n in names]
  bottom.bar(x, ratios, 0.6, color=['tab:green' if r >= 1 else 'tab:red' for r in ratios])
  bottom.axhline(1.0, color='black', linewidth=0.8)
  bottom.set_ylabel('selection / whole')
  bottom.set_xticks(x, names, rotation=45, ha='right')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def write_report(workdir: str, config, records: list[dict], index: common.ExampleIndex,
                 reader) -> dict:
  select = config.select
  report = dict(method=select.method, initial=select.initial, sizes=list(select.sizes),
                candidates=len(index), steps=[{k: v for k, v in r.items() if k != 'ids'}
                                              for r in records])
  labeled = index.is_labeled
  if labeled.any():
    position = {i: n for n, i in enumerate(index.ids.tolist())}
    labeled_index = index.subset(np.flatnonzero(labeled))
    labeled_position = {i: n for n, i in enumerate(labeled_index.ids.tolist())}
    whole = statistics.class_frequencies(labeled_index, reader.label_spec,
                                         max_labels=len(labeled_index))
    for step, record in zip(report['steps'], records):
      rows = [labeled_position[i] for i in record['ids'] if labeled[position[i]]]
      if rows:
        step['class_frequency'] = class_frequency_report(whole, labeled_index, reader.label_spec,
                                                         rows)
    final = report['steps'][-1].get('class_frequency')
    if final is not None and jax.process_index() == 0:
      plot = os.path.join(artifacts.select_dir(workdir), 'class_frequency.png')
      plot_class_frequencies(final, f'{select.method}: {len(records[-1]["ids"])} of '
                             f'{len(index)} images', plot)
      report['plot'] = plot
  write_json(os.path.join(artifacts.select_dir(workdir), 'report.json'), report)
  return report
