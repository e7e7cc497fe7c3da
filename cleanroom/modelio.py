"""Load and use a released model on the recipient's machine.

Released models are skops files (a zip archive, never pickle). `load_model` refuses anything
else, applies zip-bomb limits (member count, compressed size, summed uncompressed size measured
while reading, not trusted from headers) and loads only if every type skops does not trust by
default is in `TRUSTED_TYPES`, the explicit list of types our release phase may emit.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from cleanroom.errors import ValidationError
from cleanroom.sandbox.vocabulary import PID, ROW_STORING_SKOPS_TYPES, TRUSTED_SKOPS_TYPES

__all__ = ["ModelFileError", "TRUSTED_TYPES", "load_model", "predict"]

# Every type the release phase may emit (cleanroom.sandbox.vocabulary), row-storing estimators included.
TRUSTED_TYPES = TRUSTED_SKOPS_TYPES | ROW_STORING_SKOPS_TYPES
MAX_FILE_BYTES = 256 * 2**20
MAX_MEMBERS = 100_000
MAX_UNCOMPRESSED_BYTES = 1 * 2**30


class ModelFileError(ValidationError):
    """The file is not a safe released model, or the input does not fit the model."""

    code = "invalid_model_file"


def _check_archive(data: bytes) -> None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelFileError("not a skops file (pickle and other formats are refused)")
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise ModelFileError(f"skops file has more than {MAX_MEMBERS} members")
            if "schema.json" not in archive.namelist():
                raise ModelFileError("not a skops file (no schema.json)")
            for member in members:
                with archive.open(member) as fh:
                    while chunk := fh.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_UNCOMPRESSED_BYTES:
                            raise ModelFileError("skops file expands past the size limit")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise ModelFileError(f"corrupt skops file: {exc}") from None


def load_model(path: str | Path) -> Any:
    """Load a released model, refusing non-skops files, zip bombs and untrusted types."""
    import skops.io as sio

    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelFileError(f"model file is larger than {MAX_FILE_BYTES} bytes")
    data = path.read_bytes()  # read once: the checks and the load see the same bytes
    _check_archive(data)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - skops raises several types on a malformed schema
        raise ModelFileError(f"unreadable skops file: {type(exc).__name__}") from None
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise ModelFileError("skops file holds untrusted types: " + ", ".join(refused))
    return sio.loads(data, trusted=sorted(untrusted))


def predict(model_path: str | Path, csv_path: str | Path, out_path: str | Path) -> int:
    """Predict every row of a CSV with a released model; write a CSV; return the row count.

    The output holds `_pid` when the input has it, then `prediction`, and for classifiers one
    `proba_<class>` column per class.
    """
    import pandas as pd

    model = load_model(model_path)
    features = [str(c) for c in getattr(model, "feature_names_in_", [])]
    if not features:
        raise ModelFileError("the model does not record its feature names")
    frame = pd.read_csv(csv_path)
    _expand_one_hot(frame, features)
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise ModelFileError(f"the CSV lacks the model's feature columns: {', '.join(missing)}")
    X = frame[features]
    types = pd.api.types
    bad = [c for c in features if not (types.is_numeric_dtype(X[c]) or types.is_bool_dtype(X[c]))]
    if bad:
        raise ModelFileError(f"feature columns must be numeric: {', '.join(bad)}")
    if X.isna().to_numpy().any():
        raise ModelFileError("feature columns have missing values")
    X = X.astype("float64")
    out = pd.DataFrame(index=frame.index)
    if PID in frame.columns:
        out[PID] = frame[PID]
    out["prediction"] = model.predict(X)
    if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
        try:
            proba = model.predict_proba(X)
        except AttributeError:  # e.g. SVC without probability=True
            proba = None
        if proba is not None:
            for i, label in enumerate(model.classes_):
                out[f"proba_{label}"] = proba[:, i]
    out.to_csv(out_path, index=False)
    return len(out)


def _expand_one_hot(frame: Any, features: list[str]) -> None:
    """Rebuild one-hot features (`<column>_<value>`) the model wants from raw category columns.

    A released model trained after the `one-hot` plugin expects indicator columns; new data on the
    recipient's machine has the raw column. Values the model never saw give all-zero indicators.
    """
    for feature in features:
        if feature in frame.columns:
            continue
        for column in frame.columns:
            prefix = f"{column}_"
            if feature.startswith(prefix) and not _numeric(frame[column]):
                frame[feature] = (frame[column].astype(str) == feature[len(prefix):]).astype("float64")
                break


def _numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series))
