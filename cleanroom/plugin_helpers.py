"""The public name of the plugin helpers: plugins write `from cleanroom.plugin_helpers import ...`.

The helpers live in `cleanroom/sandbox/compute/helpers.py` (they run in the compute phase); this
module re-exports them so the name plugins use never changes.
"""

from cleanroom.sandbox.compute.helpers import *  # noqa: F403
from cleanroom.sandbox.compute.helpers import __all__  # noqa: F401
