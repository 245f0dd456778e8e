"""The one exception type for bad user input (config, data files, work dirs)."""


class UsageError(ValueError):
  """Bad input from the user. ``gradnoise.run`` prints the message and exits with code 2.

  The message names the field or file that is wrong and what would be accepted.
  """
