"""Load and use a released model on the recipient's machine.

Released models are skops files (a zip archive, never pickle). `load_model` refuses anything
else, applies zip-bomb limits (member count, compressed size, summed uncompressed size measured
while reading, not trusted from headers) and loads only if every type skops does not trust by
default is in `TRUSTED_TYPES`, the explicit list of types our release phase may emit.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Sequence
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


def predict(
    model_path: str | Path,
    csv_path: str | Path,
    out_path: str | Path,
    *,
    keep: Sequence[str] | None = None,
    unseen: str = "error",
    warn: Callable[[str], None] | None = None,
) -> int:
    """Predict every row of a CSV with a released model; write a CSV; return the row count.

    The output holds the `keep` columns of the input (by default its id column: `_pid`, else a first
    column whose values are all distinct and that the model does not use), then `prediction`, and for
    classifiers one `proba_<class>` column per class.

    A raw category column is expanded to the model's one-hot columns (`<column>_<value>`). A value the
    model never saw is an error naming the column and the value (`unseen="error"`), unless the model has
    the catch-all `<column>_other`; with `unseen="ignore"` such rows get all-zero indicators and `warn`
    is told how many. Nothing is written when the input does not fit the model.
    """
    import pandas as pd

    if unseen not in ("error", "ignore"):
        raise ValidationError(f"unseen must be 'error' or 'ignore', not {unseen!r}")
    model = load_model(model_path)
    features = [str(c) for c in getattr(model, "feature_names_in_", [])]
    if not features:
        raise ModelFileError("the model does not record its feature names")
    frame = pd.read_csv(csv_path)
    frame.columns = [str(c) for c in frame.columns]
    kept = _kept_columns(frame, features, keep)
    expanded = _expand_one_hot(frame, features)
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise ModelFileError(
            f"the CSV lacks the model's feature columns: {_describe_missing(missing)}",
            hint=f"its columns: {', '.join(map(str, frame.columns))}",
        )
    _check_unseen(frame, expanded, unseen, warn)
    X = frame[features]
    types = pd.api.types
    bad = [c for c in features if not (types.is_numeric_dtype(X[c]) or types.is_bool_dtype(X[c]))]
    if bad:
        raise ModelFileError(f"feature columns must be numeric: {', '.join(bad)}")
    gaps = [c for c in features if X[c].isna().any()]
    if gaps:
        raise ModelFileError(f"feature columns have missing values: {', '.join(gaps)}")
    X = X.astype("float64")
    out = pd.DataFrame(index=frame.index)
    for column in kept:
        out[column] = frame[column]
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


def _kept_columns(frame: Any, features: list[str], keep: Sequence[str] | None) -> list[str]:
    """The input columns carried to the output: `keep` as given, else the id column when there is one."""
    if keep is not None:
        absent = [c for c in keep if c not in frame.columns]
        if absent:
            raise ModelFileError(
                f"no column {absent[0]!r} in the CSV to keep", hint=f"its columns: {', '.join(map(str, frame.columns))}"
            )
        clash = [c for c in keep if c == "prediction" or c.startswith("proba_")]
        if clash:
            raise ModelFileError(f"cannot keep {clash[0]!r}: the output's own column has that name")
        return list(dict.fromkeys(keep))
    if PID in frame.columns:
        return [PID]
    if len(frame.columns) and len(frame):
        first = str(frame.columns[0])
        used = first in features or any(f.startswith(f"{first}_") for f in features)
        if not used and frame[first].notna().all() and frame[first].is_unique:
            return [first]
    return []


def _expand_one_hot(frame: Any, features: list[str]) -> dict[str, list[str]]:
    """Rebuild one-hot features (`<column>_<value>`) the model wants from raw category columns.

    A released model trained after the `one-hot` plugin expects indicator columns; new data on the
    recipient's machine has the raw column. Returns the raw columns expanded, each with its categories
    (the `other` catch-all last when the model has it). A missing value gives all-zero indicators, as
    the plugin encodes it.
    """
    expanded: dict[str, list[str]] = {}
    for feature in features:
        if feature in frame.columns:
            continue
        for column in frame.columns:
            prefix = f"{column}_"
            if feature.startswith(prefix) and not _numeric(frame[column]):
                expanded.setdefault(column, []).append(feature[len(prefix) :])
                break
    for column, values in expanded.items():
        text = frame[column].astype(str).where(frame[column].notna())
        known = [v for v in values if v != OTHER]
        for value in known:
            frame[f"{column}_{value}"] = (text == value).astype("float64")
        if OTHER in values:  # the plugin's catch-all for the categories it did not keep
            frame[f"{column}_{OTHER}"] = (text.notna() & ~text.isin(known)).astype("float64")
        expanded[column] = known + ([OTHER] if OTHER in values else [])
    return expanded


OTHER = "other"  # the one-hot plugin's default other_label


def _check_unseen(frame: Any, expanded: dict[str, list[str]], unseen: str, warn: Callable[[str], None] | None) -> None:
    """Values of an expanded column the model never saw: an error, or (ignore) a warning with the count."""
    for column, values in expanded.items():
        if OTHER in values:
            continue  # the model has a category for them
        text = frame[column].astype(str).where(frame[column].notna())
        new = text.notna() & ~text.isin(values)
        if not new.any():
            continue
        first = text[new].iloc[0]
        line = int(new.to_numpy().nonzero()[0][0]) + 2  # 1-based, after the header line
        distinct = sorted(set(text[new]))
        if unseen == "error":
            others = f" (and {len(distinct) - 1} other unseen value(s))" if len(distinct) > 1 else ""
            raise ModelFileError(
                f"column {column!r} has the value {first!r} at line {line}{others}, which the model never saw "
                f"(it knows {', '.join(map(repr, values))})",
                hint="fix the value, or score such rows with all-zero indicators: --unseen ignore",
            )
        if warn is not None:
            warn(
                f"{int(new.sum())} row(s) have a value of {column!r} the model never saw "
                f"({', '.join(map(repr, distinct[:5]))}{', ...' if len(distinct) > 5 else ''}): "
                "scored with all-zero indicators"
            )


def _describe_missing(missing: list[str]) -> str:
    """Missing features, with one-hot columns grouped under the raw column they come from."""
    groups: dict[str, list[str]] = {}
    for name in missing:
        groups.setdefault(name.rsplit("_", 1)[0] if "_" in name else name, []).append(name)
    parts = []
    for base, names in groups.items():
        if len(names) > 1:
            parts.append(f"{base} (a category column: the model has its one-hot columns {', '.join(names)})")
        else:
            parts.extend(names)
    return ", ".join(parts)


def _numeric(series: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series))
