"""The one exception type for bad user input (config, data files, work dirs)."""

from __future__ import annotations


class UsageError(ValueError):
  """Bad input from the user. ``gradnoise.run`` prints the message and exits with code 2.

  The message names the field or file that is wrong and what would be accepted.

  Attributes:
    field: the dotted config field at fault, when there is one (so that the caller can add
      where its value came from: the command line, the sweep or the config file).
  """

  def __init__(self, message: str, field: str | None = None):
    super().__init__(message)
    self.field = field
