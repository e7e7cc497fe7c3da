"""cleanroom: a plugin-based data clean room that runs in Docker.

Kept light on purpose: the sandbox image imports this package with only pandas, numpy,
scikit-learn, skops, pyarrow and pluggy installed, so heavy names load lazily.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Client", "__version__", "errors"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from cleanroom.client import Client

        return Client
    if name == "errors":
        from cleanroom import errors

        return errors
    raise AttributeError(name)
