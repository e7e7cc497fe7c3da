"""`python -I -m cleanroom.sandbox.compute`: the compute phase's entry point (see phase.py)."""

import os
import sys

from cleanroom.sandbox.compute.phase import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
# The response is written and flushed: skip the interpreter's teardown (freeing every frame and
# module takes tenths of a second at 1M rows), which the runner would otherwise wait for.
os._exit(code)
