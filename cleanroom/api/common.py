"""What several routers share: one pagination scheme for every list, and the rule on withdrawn datasets.

Every list route takes `limit` and `after` and answers `{"items": [...], "next": cursor or null}`.
A cursor is opaque to clients (base64url of the last item's sort key); pass `next` back as `after`
to get the following page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from cleanroom.errors import Conflict, ValidationError

T = TypeVar("T")

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
After = Annotated[str | None, Query(max_length=400, description="the `next` cursor of the previous page")]


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *types: type) -> tuple[Any, ...] | None:
    """The sort key in a cursor made by `encode_cursor`, checked against `types`; None for no cursor."""
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != len(types)
        or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, types, strict=True))
    ):
        raise ValidationError("the page cursor `after` is not valid", hint="pass the `next` of a previous page")
    return tuple(key)


def page(
    rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]], view: Callable[[T], Any] = lambda r: r
) -> dict[str, Any]:
    """The page envelope from up to `limit + 1` rows (one more than shown tells that a next page exists)."""
    shown = list(rows[:limit])
    more = len(rows) > limit and shown
    return {"items": [view(r) for r in shown], "next": encode_cursor(key(shown[-1])) if more else None}


def check_not_withdrawn(ds: Any) -> None:
    """Refuse new uses of a withdrawn dataset (jobs already running finish)."""
    if ds.get("withdrawn_at") is not None:
        raise Conflict(
            f"dataset {ds['name']!r} was withdrawn by its owner: it takes no new jobs, approvals or policies",
            hint=f"remove {ds['name']!r} from the job's inputs, or ask its owner "
            "to upload the data again under a new name",
        )


class JobIn(BaseModel):
    """A job spec (TOML), as `submit_job` and `job_cost` take it."""

    spec: str = Field(max_length=100_000)
