"""A job's inputs on the runner: fetched as ciphertext, checked against their hashes, decrypted in memory,
and recoded (`_pid` as int64 codes fresh for the job, `never_output` columns left out)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from cleanroom.crypto import KeyPair, decrypt_bytes, digest
from cleanroom.errors import IntegrityError, IntegrityFailure, PhaseFailed, PhaseFailure
from cleanroom.runner import recode
from cleanroom.runner.context import DatasetRef, JobContext


class CiphertextSource(Protocol):
    def ciphertext(self, name: str, max_bytes: int) -> bytes: ...


def plaintext(api: CiphertextSource, keys: KeyPair, ds: DatasetRef) -> bytes:
    """One input's plaintext (an Arrow stream), only after its ciphertext matched the hash the owner uploaded."""
    ciphertext = api.ciphertext(ds.name, ds.size)
    if digest(ciphertext) != ds.sha256:
        raise IntegrityFailure(f"the ciphertext of {ds.name} does not match its hash")
    try:
        return decrypt_bytes(ciphertext, keys)
    except IntegrityError as exc:
        raise IntegrityFailure(f"{ds.name}: {exc.message}") from exc


def decrypt_inputs(
    api: CiphertextSource, keys: KeyPair, ctx: JobContext, *, max_bytes: int, drop: Collection[str]
) -> list[tuple[str, bytes]]:
    """Every input as the compute phase gets it, in job order, as (dataset name, Arrow stream): `_pid` as
    int64 codes, the same in every input and fresh for this job; `drop` (never_output) columns left out.
    Inputs that decode past `max_bytes` are refused as the phase would be: out of memory."""
    files: dict[str, bytes] = {}
    for i, ds in enumerate(ctx.datasets):
        files[f"inputs/{i}.arrow"] = plaintext(api, keys, ds)
    try:  # recode takes each plaintext out of `files` once it is done with it
        out = recode.recode_inputs(
            files, {f"inputs/{i}.arrow": ds.name for i, ds in enumerate(ctx.datasets)}, max_bytes=max_bytes, drop=drop
        )
    except recode.TooLarge as exc:
        raise PhaseFailed("compute", PhaseFailure.OUT_OF_MEMORY, str(exc)) from exc
    except recode.RecodeError as exc:
        raise IntegrityFailure(str(exc)) from exc
    return [(ds.name, out.pop(f"inputs/{i}.arrow")) for i, ds in enumerate(ctx.datasets)]
