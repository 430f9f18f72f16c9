"""What every launcher shares: flag parsing, logging, and one clear line per user error.

A mistake on the command line (an unknown `--config.x.y` key, a value of the
wrong type) or in the inputs (a missing dataset, an inconsistent config, an
incompatible checkpoint) ends the program with `error: <what is wrong>` and
exit status 1, never a traceback. Bugs still raise with their traceback: an
exception is a user error only when a `raise` statement of ours (in this package
or a config file) raised it, so a ValueError from inside jax or numpy, or a typo
in a config file, keeps its traceback.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
import functools
import os
import site
import sys
import types

from absl import app, flags

from pflow_jax import logs

# Exceptions that mean "the user's input is wrong", not "the code is wrong".
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, FileExistsError)


_LIBRARY_DIRS = tuple({os.path.abspath(d) for d in (
    sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
    site.getusersitepackages())})
_THIS_FILE = os.path.abspath(__file__)


def _is_library(filename: str) -> bool:
  """Code we did not write: the interpreter's, an installed package's, or generated."""
  if filename.startswith('<'):
    return True
  path = os.path.abspath(filename)
  if path.startswith(os.path.dirname(_THIS_FILE) + os.sep):
    return False  # this package, wherever it is installed
  return any(path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def _tracebacks(error: BaseException) -> list[types.TracebackType]:
  """The frames of `error`'s traceback, outermost first."""
  tbs, tb = [], error.__traceback__
  while tb is not None:
    tbs.append(tb)
    tb = tb.tb_next
  return tbs


@functools.lru_cache(maxsize=None)
def _raise_lines(filename: str) -> frozenset[int]:
  """Line numbers covered by `raise` statements in a source file."""
  try:
    with open(filename) as f:
      tree = ast.parse(f.read())
  except (OSError, SyntaxError, ValueError):
    return frozenset()
  return frozenset(line for node in ast.walk(tree) if isinstance(node, ast.Raise)
                   for line in range(node.lineno, node.end_lineno + 1))


def raised_on_purpose(error: BaseException) -> bool:
  """True when a `raise` statement we wrote (in this package or a config file) raised
  `error`: bad input we refuse, not a failure inside a library (whose innermost
  Python frame may still be ours when the library is C code)."""
  tbs = _tracebacks(error)
  if not tbs:
    return False
  filename = tbs[-1].tb_frame.f_code.co_filename
  return not _is_library(filename) and tbs[-1].tb_lineno in _raise_lines(filename)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}\nSee --helpfull for the flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if isinstance(e, ValueError) and raised_on_purpose(e):
      sys.exit(f'error: {e}')  # e.g. a config file refusing an unknown variant
    files = [tb.tb_frame.f_code.co_filename for tb in _tracebacks(e)]
    if any(not _is_library(f) and os.path.abspath(f) != _THIS_FILE for f in files):
      raise  # a bug in a config file: keep the traceback
    if isinstance(e, (AttributeError, KeyError)):
      # ml_collections raises these for a `--config.a.b` that names no field.
      key = str(e).strip('\'"')
      sys.exit(f'error: unknown config key {key!r} in the command-line overrides; the config '
               'rejects keys it does not define (see the experiment file in configs/)')
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
      if not raised_on_purpose(e):
        raise
      sys.exit(f'error: {e}')

  app.run(wrapped, flags_parser=_parse_flags)
