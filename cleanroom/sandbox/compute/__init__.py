"""Zone C, untrusted: the compute phase, where approved plugin code runs (no network, no key).

`phase` is the entry point (`python -I -m cleanroom.sandbox.compute`); `helpers` is the small library
plugins import as `cleanroom.plugin_helpers`. Nothing outside the sandbox image is importable here.
"""
