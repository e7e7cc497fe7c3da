"""The public name of the plugin contract: plugins write `from cleanroom.hookspecs import hookimpl`.

The contract lives in `cleanroom/sandbox/hookspecs.py` (it ships in the sandbox image); this module
re-exports it so the name plugins use never changes. It imports nothing but that module.
"""

from cleanroom.sandbox.hookspecs import *  # noqa: F403
from cleanroom.sandbox.hookspecs import __all__  # noqa: F401
