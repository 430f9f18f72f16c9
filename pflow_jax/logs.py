"""Console logging for the launchers: our messages, not the libraries' chatter."""

import logging as std_logging

from absl import logging

# Libraries whose INFO lines (one per checkpoint file, per host sync...) drown ours.
_CHATTY = ('/orbax/', '/tensorstore/', '/grain/', '/tensorflow_datasets/', '/etils/')


class _QuietLibraries(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _CHATTY)


def setup() -> None:
  """INFO for pflow_jax, WARNING and above for the chatty libraries."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
