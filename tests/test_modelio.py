"""Client-side model loading: skops only, explicit type allow-list, zip-bomb limits, predictions."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import FunctionTransformer

from cleanroom import modelio
from cleanroom.modelio import ModelFileError
from cleanroom.sandbox import vocabulary


class Custom(BaseEstimator):
    """A type skops does not trust."""

    def __init__(self, a: int = 1) -> None:
        self.a = a


def training() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.integers(18, 90, 300).astype(float), "income": rng.normal(50, 10, 300)})
    df["spend"] = 2 * df["age"] + df["income"]
    return df


def save(tmp_path: Path, obj: object, name: str = "model.skops") -> Path:
    path = tmp_path / name
    path.write_bytes(sio.dumps(obj))
    return path


def test_trusted_types_are_every_type_the_release_phase_may_emit() -> None:
    assert modelio.TRUSTED_TYPES == vocabulary.TRUSTED_SKOPS_TYPES | vocabulary.ROW_STORING_SKOPS_TYPES


def test_benign_skops_models_load(tmp_path: Path) -> None:
    df = training()
    linear = LinearRegression().fit(df[["age", "income"]], df["spend"])
    assert isinstance(modelio.load_model(save(tmp_path, linear)), LinearRegression)
    boosted = GradientBoostingClassifier(n_estimators=5, min_samples_leaf=10)
    boosted.fit(df[["age", "income"]], df["spend"] > 150)
    loaded = modelio.load_model(save(tmp_path, boosted, "gb.skops"))
    assert (loaded.predict(df[["age", "income"]]) == boosted.predict(df[["age", "income"]])).all()


def test_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(LinearRegression()))
    with pytest.raises(ModelFileError, match="not a skops file"):
        modelio.load_model(path)


def test_zip_without_skops_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"not a model")
    with pytest.raises(ModelFileError, match="no schema.json"):
        modelio.load_model(path)


def test_custom_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="untrusted types: .*Custom"):
        modelio.load_model(save(tmp_path, Custom()))


def test_functions_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="untrusted types"):
        modelio.load_model(save(tmp_path, FunctionTransformer(func=os.system)))


def test_zip_bomb_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = training()
    path = save(tmp_path, LinearRegression().fit(df[["age"]], df["spend"]))
    monkeypatch.setattr(modelio, "MAX_UNCOMPRESSED_BYTES", 100)
    with pytest.raises(ModelFileError, match="expands past"):
        modelio.load_model(path)
    monkeypatch.setattr(modelio, "MAX_UNCOMPRESSED_BYTES", 2**30)
    monkeypatch.setattr(modelio, "MAX_MEMBERS", 1)
    with pytest.raises(ModelFileError, match="more than 1 members"):
        modelio.load_model(path)


def test_predict_writes_predictions_and_names_missing_columns(tmp_path: Path) -> None:
    df = training()
    model_path = save(tmp_path, LinearRegression().fit(df[["age", "income"]], df["spend"]))
    csv = tmp_path / "new.csv"
    df.assign(_pid=[f"p{i}" for i in range(len(df))]).to_csv(csv, index=False)
    out = tmp_path / "pred.csv"
    assert modelio.predict(model_path, csv, out) == len(df)
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["_pid", "prediction"]
    assert np.allclose(pred["prediction"], df["spend"])
    df[["age"]].to_csv(csv, index=False)
    with pytest.raises(ModelFileError, match="lacks the model's feature columns: income"):
        modelio.predict(model_path, csv, out)


def test_predict_gives_class_probabilities(tmp_path: Path) -> None:
    df = training()
    model = GradientBoostingClassifier(n_estimators=5).fit(df[["age", "income"]], df["spend"] > 150)
    csv, out = tmp_path / "new.csv", tmp_path / "pred.csv"
    df.to_csv(csv, index=False)
    modelio.predict(save(tmp_path, model), csv, out)
    assert list(pd.read_csv(out).columns) == ["prediction", "proba_False", "proba_True"]


def test_model_file_errors_belong_to_the_error_tree() -> None:
    from cleanroom.errors import ValidationError

    assert issubclass(ModelFileError, ValidationError)
