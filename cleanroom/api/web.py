"""The review web page (server-rendered). Filled in by the web-page work; routes named web_*."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
