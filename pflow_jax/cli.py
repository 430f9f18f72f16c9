"""What every launcher shares: flag parsing, logging, and one clear line per user error.

A mistake on the command line (an unknown `--config.x.y` key, a value of the
wrong type) or in the inputs (a missing dataset, an inconsistent config, an
incompatible checkpoint) ends the program with `error: <what is wrong>` and
exit status 1, never a traceback. Bugs still raise with their traceback.
"""

from __future__ import annotations

from collections.abc import Callable
import sys

from absl import app, flags

from pflow_jax import logs

# Exceptions that mean "the user's input is wrong", not "the code is wrong".
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, FileExistsError)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}\nSee --helpfull for the flags.')
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for a `--config.a.b` that names no field.
    key = str(e).strip('\'"')
    sys.exit(f'error: unknown config key {key!r} in the command-line overrides; the config '
             'rejects keys it does not define (see the experiment file in configs/)')
  except (TypeError, ValueError) as e:
    sys.exit(f'error: bad command-line value: {e}')


def run(main: Callable[[list[str]], object],
        user_errors: tuple[type[Exception], ...] = ()) -> None:
  """absl `app.run(main)` with the error conventions above.

  user_errors: extra exception types (e.g. CheckpointError) reported as one line.
  """
  known = USER_ERRORS + tuple(user_errors)

  def wrapped(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    logs.setup()
    try:
      return main(argv)
    except known as e:
      sys.exit(f'error: {e}')

  app.run(wrapped, flags_parser=_parse_flags)
