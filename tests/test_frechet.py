"""The Frechet distance against closed forms and an independent matrix square root."""

import numpy as np
import pytest
import scipy.linalg

from pflow_jax.eval import frechet


def test_commuting_covariances_give_the_closed_form():
  # Same eigenvectors: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
  rng = np.random.default_rng(0)
  rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  got = frechet.gaussian_frechet_distance(mu1, rotation @ np.diag(a) @ rotation.T,
                                          mu2, rotation @ np.diag(b) @ rotation.T)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_general_covariances_match_scipy_sqrtm():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  cov1, cov2 = x @ x.T + 0.1 * np.eye(6), y @ y.T
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  cross = scipy.linalg.sqrtm(cov1 @ cov2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * cross)
  got = frechet.gaussian_frechet_distance(mu1, cov1, mu2, cov2)
  np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_samples_of_one_gaussian_are_close_and_shifted_ones_are_not():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))
  same = frechet.frechet_distance(a, b, min_samples=8)
  shifted = frechet.frechet_distance(a, b + 1.0, min_samples=8)
  assert same < 0.05
  np.testing.assert_allclose(shifted, 8.0, rtol=0.05)  # |dmu|^2 = 8


def test_too_few_samples_are_refused():
  with pytest.raises(ValueError, match='at least 64 samples'):
    frechet.frechet_distance(np.zeros((63, 64)), np.zeros((100, 64)), min_samples=64)
