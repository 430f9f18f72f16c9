"""The Frechet distance between two Gaussians fitted to feature sets (FID, FVD, ours).

d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), in float64 on the host.
tr((S_1 S_2)^(1/2)) is the sum of the square roots of the eigenvalues of
S_1^(1/2) S_2 S_1^(1/2), a symmetric PSD matrix, so two symmetric eigen-
decompositions replace scipy's general (and complex-valued) sqrtm.
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def gaussian_frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray,
                              cov2: np.ndarray) -> float:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or mu1.ndim != 1 or cov1.shape != cov2.shape \
      or cov1.shape != mu1.shape * 2:
    raise ValueError(f'mismatched Gaussians: means {mu1.shape}, {mu2.shape}, covariances '
                     f'{cov1.shape}, {cov2.shape}')
  root1 = _psd_sqrt(cov1)
  inner = root1 @ cov2 @ root1
  cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
  return float(np.sum(np.square(mu1 - mu2)) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance with ddof 1) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'need features [N >= 2, D], got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(features1: np.ndarray, features2: np.ndarray, min_samples: int) -> float:
  """Frechet distance of two feature sets [N_i, D]; refuses sets smaller than min_samples.

  With fewer samples than feature dimensions the covariance is singular and the
  estimate is dominated by its bias, so callers set min_samples >= D.
  """
  for name, f in (('first', features1), ('second', features2)):
    if len(f) < min_samples:
      raise ValueError(f'the Frechet distance needs at least {min_samples} samples per set '
                       f'(feature dimension {np.shape(f)[-1]}); the {name} set has {len(f)}')
  return gaussian_frechet_distance(*feature_statistics(features1),
                                   *feature_statistics(features2))
