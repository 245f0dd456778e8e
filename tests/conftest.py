"""Makes the repository's config files importable as ``configs`` in the tests.

gradnoise loads config files by path and does not install ``configs`` as a package; the
tests import them by module name, from this checkout.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
