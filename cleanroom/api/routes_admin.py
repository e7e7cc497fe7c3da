"""Admin routes over the room's storage: the check (read-only) and the sweep (the only blob deletion)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.schemas import StorageCheck, StorageSweep
from cleanroom.store import sweep

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/storage/check", operation_id="storage_check", response_model=StorageCheck)
def storage_check(verify_hashes: bool = True, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Every referenced blob exists with the right sha256; orphans, staged files, an interrupted sweep."""
    return sweep.check(ctx.store, verify_hashes=verify_hashes)


class SweepIn(BaseModel):
    grace_seconds: int | None = Field(default=None, ge=0, le=10 * 365 * 86400)
    dry_run: bool = False


@router.post("/storage/sweep", operation_id="storage_sweep", response_model=StorageSweep)
def storage_sweep(body: SweepIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Delete blobs no record references that are older than the grace period (audited)."""
    grace = body.grace_seconds if body.grace_seconds is not None else ctx.settings.blob_grace_seconds
    return sweep.sweep(
        ctx.store,
        actor=ctx.caller.name,
        grace_seconds=grace,
        upload_ttl_seconds=ctx.settings.upload_ttl_seconds,
        dry_run=body.dry_run,
    )
