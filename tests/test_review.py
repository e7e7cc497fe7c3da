"""The static review of plugin bundles: every listed pattern is caught at its line; clean code is clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom import bundle, review
from cleanroom.sandbox import bundles as fmt

REPO = Path(__file__).resolve().parent.parent
BUILT_INS = sorted(p for p in (REPO / "plugins").iterdir() if (p / "cleanroom-plugin.toml").is_file())
MANIFEST = b'name = "demo"\nversion = "1.0.0"\nkind = "preprocess"\nentry = "plugin.py"\n'
HEADER = "import numpy as np\nimport pandas as pd\nfrom cleanroom.hookspecs import hookimpl\n"


def review_files(files: dict[str, bytes], manifest: bytes = MANIFEST) -> review.Report:
    return review.review(bundle.unpack(fmt.pack_files({"cleanroom-plugin.toml": manifest, **files})))


CASES = [
    # (code after the 3-line header, rule, severity, line of the finding)
    ("import socket", "dangerous-import", "blocking", 4),
    ("import subprocess", "dangerous-import", "blocking", 4),
    ("from subprocess import run as go", "dangerous-import", "blocking", 4),
    ("import os as o\n\no.system('ls')", "dangerous-call", "blocking", 6),
    ("import os\nx = os.environ", "dangerous-call", "blocking", 5),
    ("from os import system", "dangerous-import", "blocking", 4),
    ("import sys", "dangerous-import", "blocking", 4),
    ("import ctypes", "dangerous-import", "blocking", 4),
    ("import cffi", "dangerous-import", "blocking", 4),
    ("x = eval('1')", "dangerous-call", "blocking", 4),
    ("exec('x = 1')", "dangerous-call", "blocking", 4),
    ("code = compile('1', 'f', 'eval')", "dangerous-call", "blocking", 4),
    ("m = __import__('os')", "dangerous-call", "blocking", 4),
    ("g = globals()", "dangerous-call", "blocking", 4),
    ("g = locals()", "dangerous-call", "blocking", 4),
    ("g = vars(pd)", "dangerous-call", "blocking", 4),
    ("b = __builtins__", "dangerous-call", "blocking", 4),
    ("f = open('out.txt', 'w')", "file-write", "blocking", 4),
    ("f = open('out.txt', mode='a')", "file-write", "blocking", 4),
    ("f = open('out.txt', 'r+')", "file-write", "blocking", 4),
    ("mode = 'w'\nf = open('out.txt', mode)", "file-write", "blocking", 5),
    ("f = open('in.txt')", "file-read", "warning", 4),
    ("f = open('in.txt', 'rb')", "file-read", "warning", 4),
    ("o = open", "file-write", "blocking", 4),
    ("import pickle", "dangerous-import", "blocking", 4),
    ("import marshal", "dangerous-import", "blocking", 4),
    ("import shelve", "dangerous-import", "blocking", 4),
    ("import joblib", "dangerous-import", "blocking", 4),
    ("import dill", "dangerous-import", "blocking", 4),
    ("import importlib", "dangerous-import", "blocking", 4),
    ("from importlib import import_module", "dangerous-import", "blocking", 4),
    ("import builtins", "dangerous-import", "blocking", 4),
    ("def f(df, name):\n    return getattr(df, name)", "dynamic-attribute", "blocking", 5),
    ("def f(df, name):\n    setattr(df, name, 1)", "dynamic-attribute", "blocking", 5),
    ("def f(df, name):\n    delattr(df, name)", "dynamic-attribute", "blocking", 5),
    ("def f(df):\n    return getattr(df, '__class__')", "dunder-attribute", "blocking", 5),
    ("x = ().__class__.__bases__[0].__subclasses__()", "dunder-attribute", "blocking", 4),
    ("def f(g):\n    return g.__globals__", "dunder-attribute", "blocking", 5),
    ("def f(g):\n    return g.__code__", "dunder-attribute", "blocking", 5),
    ("def f(g):\n    return g.__builtins__", "dunder-attribute", "blocking", 5),
    ("x = int.__mro__", "dunder-attribute", "blocking", 4),
    ("x = pd.DataFrame.__dict__", "dunder-attribute", "blocking", 4),
    ("x = pd.__file__", "dunder-attribute", "warning", 4),
    ("x = '{0.__globals__}'", "dunder-string", "blocking", 4),
    ("df = pd.read_pickle('x.pkl')", "unsafe-deserialisation", "blocking", 4),
    ("df = pd.read_csv('/etc/passwd')", "file-read", "blocking", 4),
    ("from pandas import read_parquet\ndf = read_parquet('x')", "file-read", "blocking", 5),
    ("def f(df):\n    df.to_csv('out.csv')", "file-write", "blocking", 5),
    ("def f(df):\n    df.to_json(path_or_buf='x.json')", "file-write", "blocking", 5),
    ("def f(df):\n    df.to_pickle('x.pkl')", "unsafe-deserialisation", "blocking", 5),
    ("def f(a):\n    a.tofile('x.bin')", "file-write", "blocking", 5),
    ("a = np.load('x.npy', allow_pickle=True)", "unsafe-deserialisation", "blocking", 4),
    ("from numpy import load as ld\na = ld('x.npy', allow_pickle=True)", "unsafe-deserialisation", "blocking", 5),
    ("a = np.load('x.npy')", "file-read", "warning", 4),
    ("np.save('x.npy', [1])", "file-write", "blocking", 4),
    ("x = pd.eval('1 + 2')", "string-eval", "warning", 4),
    ("def f(df):\n    return df.eval('a + b')", "string-eval", "warning", 5),
    ("def f(df):\n    return df.query('a > 1')", "string-eval", "warning", 5),
    ("import numpy.ctypeslib", "dangerous-import", "blocking", 4),
    ("from numpy import ctypeslib", "dangerous-import", "blocking", 4),
    ("lib = np.ctypeslib.load_library('x', '.')", "dangerous-call", "blocking", 4),
    ("import urllib.request", "dangerous-import", "blocking", 4),
    ("from http import client", "dangerous-import", "blocking", 4),
    ("import requests", "dangerous-import", "blocking", 4),
    ("import threading", "dangerous-import", "blocking", 4),
    ("import multiprocessing", "dangerous-import", "blocking", 4),
    ("import signal", "dangerous-import", "blocking", 4),
    ("import time\ntime.sleep(10)", "sleep", "warning", 5),
    ("import tqdm", "import-not-allowed", "blocking", 4),
    ("import cleanroom.bundle", "import-not-allowed", "blocking", 4),
    ("from sklearn.datasets import fetch_openml\nX = fetch_openml('x')", "network", "blocking", 5),
    ("import operator\n\n\ndef f(name):\n    return operator.attrgetter(name)", "dynamic-attribute", "blocking", 8),
    ("from . import helpers as h\nimport helpers", "local-absolute-import", "warning", 5),
    ("from math import *", "star-import", "warning", 4),
]


@pytest.mark.parametrize("code, rule, severity, line", CASES, ids=[c[0].splitlines()[-1][:40] for c in CASES])
def test_each_pattern_is_caught_at_its_line(code: str, rule: str, severity: str, line: int) -> None:
    report = review_files(
        {
            "plugin.py": (HEADER + code + "\n\n\ndef preprocess(df, params):\n    return df\n").encode(),
            "helpers.py": b"X = 1\n",
        }
    )
    hits = [(f.rule, f.severity, f.line) for f in report.findings]
    assert (rule, severity, line) in hits, hits


def test_syntax_errors_are_blocking_with_their_line() -> None:
    source = b"import pandas as pd\n\ndef preprocess(df, params:\n    return df\n"
    report = review_files({"plugin.py": source})
    [finding] = report.findings
    assert (finding.rule, finding.severity, finding.line, finding.file) == ("syntax-error", "blocking", 3, "plugin.py")


def test_other_encodings_and_invalid_utf8_are_blocking() -> None:
    utf7 = b"# -*- coding: utf-7 -*-\nx = 1\n"
    bad = b"x = 1\ny = '\xff'\n"
    plugin = b"def preprocess(df, params):\n    return df\n"
    report = review_files({"plugin.py": plugin, "a.py": utf7, "b.py": bad})
    found = [(f.file, f.rule, f.line) for f in report.blocking]
    assert found == [("a.py", "encoding", 1), ("b.py", "encoding", 2)]


def test_a_clean_plugin_has_no_findings() -> None:
    code = b'''"""A careful plugin."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from cleanroom.hookspecs import hookimpl

from . import helpers
from .helpers import LIMIT


@dataclass
class Options:
    columns: list[str]

    def __post_init__(self) -> None:
        self.columns = [c for c in self.columns if re.match(r"^[a-z_]+$", c)]


@hookimpl
def preprocess(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    options = Options(params.get("columns", []))
    out = df.copy()
    for column in options.columns[:LIMIT]:
        out[column] = np.log1p(out[column].clip(lower=0)) * math.pi
    counts = Counter(out.columns)
    scaled = StandardScaler().fit_transform(out[options.columns]) if options.columns else None
    text = out.to_csv()
    value = getattr(out, "shape")
    _ = (counts, scaled, text, value, type(out).__name__, helpers.X)
    return out
'''
    report = review_files({"plugin.py": code, "helpers.py": b"X = 1\nLIMIT = 10\n", "data/readme.txt": b"hi"})
    assert report.findings == [] and report.ok
    files = ["cleanroom-plugin.toml", "data/readme.txt", "helpers.py", "plugin.py"]
    assert report.to_dict() == {
        "version": review.REVIEW_VERSION,
        "files": files,
        "findings": [],
        "blocking": 0,
        "warnings": 0,
    }


def test_test_files_may_import_pytest_and_pluggy_but_plugin_code_may_not() -> None:
    test = b"import pluggy\nimport pytest\n\nimport plugin\n\n\ndef test_x():\n    assert plugin\n"
    plugin = b"import pytest\n\n\ndef preprocess(df, params):\n    return df\n"
    report = review_files({"plugin.py": plugin, "test_plugin.py": test})
    assert [(f.file, f.rule) for f in report.findings] == [("plugin.py", "import-not-allowed")]


def test_missing_hook_is_a_warning_and_findings_serialise() -> None:
    report = review_files({"plugin.py": b"import os\n\n\ndef features(df, params):\n    return df\n"})
    rules = {(f.rule, f.severity) for f in report.findings}
    assert rules == {("dangerous-import", "blocking"), ("missing-hook", "warning")}
    data = report.to_dict()
    assert data["blocking"] == 1 and data["warnings"] == 1 and not report.ok
    assert set(data["findings"][0]) == {"file", "line", "col", "rule", "severity", "message"}


def test_review_parses_and_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\n\n\ndef preprocess(df, params):\n    return df\n"
    report = review_files({"plugin.py": code.encode()})
    assert not marker.exists()
    assert [f.rule for f in report.blocking] == ["file-write"]


@pytest.mark.parametrize("folder", BUILT_INS, ids=[p.name for p in BUILT_INS])
def test_built_in_plugins_have_no_blocking_finding(folder: Path) -> None:
    report = review.review(bundle.unpack(bundle.pack(folder)))
    assert report.blocking == [], [f.message for f in report.blocking]
    assert any(path.endswith(".py") and path != report.files[0] for path in report.files)


def test_there_are_built_in_plugins_for_every_kind() -> None:
    kinds = {bundle.load_manifest(folder)["kind"] for folder in BUILT_INS}
    assert kinds == {"preprocess", "features", "model", "analysis", "statistic"} and len(BUILT_INS) >= 9
