"""Zone L, trusted: the release phase, which checks the compute phase's outputs and releases them.

It imports no plugin code and nothing from the compute phase: it reads the compute phase's outputs
as data, applies the release rules (group sizes, DP mechanisms, model checks) and writes what may
leave. `phase` is the entry point (`python -I -m cleanroom.sandbox.release`).
"""
