"""Automatic review of a plugin bundle: parse every .py file (never import or run it) and report.

This helps the data owners who review a plugin: it points at imports, calls and names that a data
analysis plugin should not need (files, network, processes, code loading, introspection). It is NOT
the security boundary: Python is too dynamic for a static check to be complete, and a determined
author can hide things from it. The boundary is the compute container (no network, read-only root,
no secrets, limits) together with the owners reading and approving the exact code.

Findings are `{file, line, col, rule, severity, message}`; `line` and `col` are 1-based. Severity is
"blocking" (an owner should not approve as is) or "warning" (read this part carefully).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cleanroom.identifiers import hidden_characters, marker
from cleanroom.sandbox.bundles import Bundle
from cleanroom.sandbox.hookspecs import HOOK_BY_KIND

__all__ = ["ALLOWED_MODULES", "Finding", "Report", "hidden_text", "review", "review_source"]

REVIEW_VERSION = 2  # 2: hidden characters and confusable identifiers
MAX_HIDDEN_FINDINGS = 20  # per file: the first ones make the point, then one count
ALLOWED_MODULES = frozenset(
    {
        "pandas",
        "numpy",
        "scipy",
        "sklearn",
        "math",
        "statistics",
        "collections",
        "itertools",
        "functools",
        "re",
        "datetime",
        "dataclasses",
        "typing",
        "json",
        "decimal",
        "fractions",
        "operator",
        "string",
        "enum",
        "cleanroom.hookspecs",
        "cleanroom.plugin_helpers",
        "__future__",  # the public plugin API (shims)
    }
)
TEST_MODULES = frozenset({"pytest", "pluggy"})  # extra modules that test files may import
WHY = {
    "runs commands or touches the system": (
        "os",
        "subprocess",
        "sys",
        "pty",
        "shutil",
        "signal",
        "resource",
        "posix",
        "fcntl",
        "mmap",
        "gc",
        "site",
        "atexit",
    ),
    "opens network connections": (
        "socket",
        "ssl",
        "urllib",
        "http",
        "requests",
        "httpx",
        "urllib3",
        "aiohttp",
        "ftplib",
        "smtplib",
        "telnetlib",
        "xmlrpc",
        "asyncio",
    ),
    "loads native code": ("ctypes", "cffi", "numpy.ctypeslib", "numpy.f2py", "numpy.distutils"),
    "deserialises code (pickle)": (
        "pickle",
        "marshal",
        "shelve",
        "joblib",
        "dill",
        "cloudpickle",
        "pandas.io.pickle",
        "copyreg",
    ),
    "loads or inspects code": (
        "importlib",
        "builtins",
        "inspect",
        "types",
        "code",
        "codeop",
        "runpy",
        "pkgutil",
        "zipimport",
    ),
    "runs threads or processes": ("threading", "_thread", "multiprocessing", "concurrent"),
    "reads or writes files": (
        "io",
        "pathlib",
        "tempfile",
        "glob",
        "fileinput",
        "scipy.io",
        "pandas.io.sql",
        "pandas.io.clipboard",
        "pandas.io.clipboards",
    ),
}
DANGEROUS = {module: why for why, modules in WHY.items() for module in modules}
ALWAYS_BLOCKED = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "__builtins__",
    "__loader__",
    "__spec__",
}
WATCHED_BUILTINS = ALWAYS_BLOCKED | {"open", "getattr", "setattr", "delattr", "hasattr"}
DANGEROUS_DUNDERS = (
    "__subclasses__",
    "__globals__",
    "__builtins__",
    "__code__",
    "__class__",
    "__bases__",
    "__base__",
    "__mro__",
    "__dict__",
    "__closure__",
    "__func__",
    "__self__",
    "__getattribute__",
    "__reduce__",
    "__reduce_ex__",
    "__import__",
    "__loader__",
    "__spec__",
    "__init_subclass__",
)
FRAME_ATTRS = {
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_back",
    "gi_frame",
    "cr_frame",
    "ag_frame",
    "tb_frame",
    "co_code",
    "func_globals",
}
SAFE_DUNDERS = {
    "__init__",
    "__name__",
    "__doc__",
    "__qualname__",
    "__post_init__",
    "__len__",
    "__iter__",
    "__next__",
    "__eq__",
    "__hash__",
    "__repr__",
    "__str__",
    "__version__",
    "__all__",
}
DUNDER_IN_STRING = re.compile("|".join(re.escape(d) for d in DANGEROUS_DUNDERS))
READERS = {
    "read_csv",
    "read_table",
    "read_fwf",
    "read_json",
    "read_parquet",
    "read_feather",
    "read_excel",
    "read_hdf",
    "read_sql",
    "read_sql_query",
    "read_sql_table",
    "read_html",
    "read_xml",
    "read_orc",
    "read_sas",
    "read_spss",
    "read_stata",
    "read_clipboard",
    "read_gbq",
}
WRITERS = {
    "to_csv",
    "to_json",
    "to_parquet",
    "to_feather",
    "to_hdf",
    "to_excel",
    "to_stata",
    "to_html",
    "to_latex",
    "to_markdown",
    "to_xml",
    "to_orc",
    "to_string",
    "to_pickle",
    "to_clipboard",
    "to_sql",
    "tofile",
    "dump",
}
ALWAYS_WRITES = {"to_pickle", "to_clipboard", "to_sql", "tofile"}
PATH_KWARGS = {"path", "path_or_buf", "path_or_buffer", "buf", "excel_writer", "fname", "file", "con"}
NUMPY_WRITES = {"save", "savez", "savez_compressed", "savetxt", "memmap", "lib.format.open_memmap"}
NUMPY_READS = {"fromfile", "loadtxt", "genfromtxt", "fromregex"}
CODING_RE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)", re.MULTILINE)


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    line: int
    col: int
    rule: str
    severity: str
    message: str


@dataclass
class Report:
    """The findings of one review, with `to_dict()` for the API."""

    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "blocking"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REVIEW_VERSION,
            "files": list(self.files),
            "findings": [asdict(f) for f in self.findings],
            "blocking": len(self.blocking),
            "warnings": len(self.warnings),
        }


def _within(name: str, prefixes: Any) -> str | None:
    """The entry of `prefixes` that `name` is (or is a submodule or attribute of), longest first."""
    for prefix in sorted(prefixes, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return str(prefix)
    return None


def _is_test(path: str) -> bool:
    base = path.rsplit("/", 1)[-1]
    return base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py"


class _Checker(ast.NodeVisitor):
    def __init__(self, path: str, local_modules: set[str]) -> None:
        self.path = path
        self.local = local_modules
        self.is_test = _is_test(path)
        self.allowed = ALLOWED_MODULES | (TEST_MODULES if self.is_test else frozenset())
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []
        self.calls: dict[str, Callable[[ast.AST, ast.Call | None, str], None]] = {
            "builtins.open": self._open,
            "numpy.load": self._numpy_load,
            "operator.attrgetter": self._getter,
            "operator.methodcaller": self._getter,
            **{f"builtins.{n}": self._attr_func for n in ("getattr", "setattr", "delattr", "hasattr")},
        }

    def add(self, node: ast.AST, rule: str, severity: str, message: str) -> None:
        line, col = getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1
        self.findings.append(Finding(self.path, line, col, rule, severity, message))

    def check(self, tree: ast.Module) -> list[Finding]:
        for node in ast.walk(tree):  # aliases first, wherever the import sits
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    self.aliases[a.asname or top] = a.name if a.asname else top
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self.visit(tree)
        return self.findings

    # ------------------------------------------------------------------------------------------ imports

    def _import(self, node: ast.AST, module: str, parent_allowed: bool = False) -> None:
        bad = _within(module, DANGEROUS)
        if bad:
            self.add(node, "dangerous-import", "blocking", f"import of {module}: it {DANGEROUS[bad]}")
        elif not parent_allowed and not _within(module, self.allowed):
            if module.split(".")[0] in self.local:
                if self.is_test:  # test runners put the folder on sys.path; the sandbox never runs tests
                    return
                self.add(
                    node,
                    "local-absolute-import",
                    "warning",
                    f"import {module} of the bundle's own "
                    "module: bundles are imported as packages, use a relative import (from . import x)",
                )
            else:
                self.add(
                    node,
                    "import-not-allowed",
                    "blocking",
                    f"import of {module} is outside the "
                    f"allow-list ({', '.join(sorted(ALLOWED_MODULES - {'__future__'}))})",
                )

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._import(node, a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            return  # the bundle's own modules, reviewed as files of their own
        module = node.module or ""
        for a in node.names:
            if a.name == "*":
                self._import(node, module)
                self.add(node, "star-import", "warning", f"from {module} import * hides what is used")
                continue
            full = f"{module}.{a.name}"
            parent_ok = bool(_within(module, self.allowed)) and not _within(full, DANGEROUS)
            self._import(node, full if not parent_ok else module, parent_allowed=parent_ok)

    # ------------------------------------------------------------------------------------------ names

    def _resolve(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            return f"builtins.{node.id}" if node.id in WATCHED_BUILTINS else None
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Call(self, node: ast.Call) -> None:
        self._ref(node.func, node)
        for arg in [*node.args, *node.keywords]:
            self.visit(arg)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._ref(node, None)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._ref(node, None)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and (m := DUNDER_IN_STRING.search(node.value)):
            self.add(node, "dunder-string", "blocking", f"string mentions {m.group(0)} (attribute access by name)")

    def _ref(self, node: ast.AST, call: ast.Call | None) -> None:
        """Check a name or attribute chain, once for the whole chain; `call` when it is being called."""
        base = node
        while isinstance(base, ast.Attribute):
            self._dunder(base, base.attr)
            base = base.value
        if not isinstance(base, ast.Name):
            self.visit(base)
        dotted = self._resolve(node)
        if dotted and self._dotted(node, dotted, call):
            return
        if isinstance(node, ast.Attribute):
            self._method(node, node.attr, dotted or "", call)
        elif dotted and "." in dotted:  # a name imported from a module: `from pandas import read_csv`
            self._method(node, dotted.rsplit(".", 1)[1], dotted, call)

    def _dunder(self, node: ast.AST, attr: str) -> None:
        if attr in DANGEROUS_DUNDERS or attr in FRAME_ATTRS:
            self.add(node, "dunder-attribute", "blocking", f"access to {attr} (introspection escapes)")
        elif attr.startswith("__") and attr.endswith("__") and attr not in SAFE_DUNDERS:
            self.add(node, "dunder-attribute", "warning", f"access to the special attribute {attr}")

    def _dotted(self, node: ast.AST, dotted: str, call: ast.Call | None) -> bool:
        """Rules on resolved names; True when one applied."""
        if dotted in self.calls:
            self.calls[dotted](node, call, dotted.rsplit(".", 1)[-1])
            return True
        name = dotted.removeprefix("builtins.")
        if dotted.startswith("builtins.") and name.split(".")[0] in ALWAYS_BLOCKED:
            self.add(node, "dangerous-call", "blocking", f"use of {name} (runs or reaches arbitrary code)")
            return True
        bad = _within(dotted, DANGEROUS)
        if bad:
            self.add(node, "dangerous-call", "blocking", f"use of {dotted}: {bad} {DANGEROUS[bad]}")
            return True
        if dotted.startswith("numpy."):
            rest = dotted.removeprefix("numpy.")
            if _within(rest, NUMPY_WRITES):
                self.add(node, "file-write", "blocking", f"{dotted} writes a file")
                return True
            if _within(rest, NUMPY_READS):
                self.add(node, "file-read", "warning", f"{dotted} reads a file")
                return True
        if dotted.startswith("sklearn.datasets.fetch_"):
            self.add(node, "network", "blocking", f"{dotted} downloads data")
            return True
        if dotted == "time.sleep":
            self.add(node, "sleep", "warning", "time.sleep only burns the job's time limit")
            return True
        return False

    def _method(self, node: ast.AST, attr: str, dotted: str, call: ast.Call | None) -> None:
        """Rules on method names whatever the receiver (usually a DataFrame or an array)."""
        if attr == "read_pickle" or attr == "to_pickle":
            self.add(node, "unsafe-deserialisation", "blocking", f"{attr} uses pickle files")
        elif attr in READERS:
            self.add(node, "file-read", "blocking", f"{attr} reads a file or URL; plugins get their data as DataFrames")
        elif attr in WRITERS and not dotted.startswith("json."):
            writes = (
                attr in ALWAYS_WRITES
                or call is None
                or bool(call.args)
                or any(
                    k.arg in PATH_KWARGS and not (isinstance(k.value, ast.Constant) and k.value.value is None)
                    for k in call.keywords
                )
            )
            if writes:
                self.add(node, "file-write", "blocking", f"{attr} with a path writes a file")
        elif attr in ("eval", "query"):
            self.add(node, "string-eval", "warning", f"{attr} evaluates an expression given as a string")

    # ------------------------------------------------------------------------------------------ calls

    def _open(self, node: ast.AST, call: ast.Call | None, name: str) -> None:
        if call is None:
            self.add(node, "file-write", "blocking", "open referenced without a call (its mode is hidden)")
            return
        mode = (
            call.args[1]
            if len(call.args) > 1
            else next((k.value for k in call.keywords if k.arg == "mode"), ast.Constant("r"))
        )
        if any(k.arg is None or k.arg == "opener" for k in call.keywords) or any(
            isinstance(a, ast.Starred) for a in call.args
        ):
            self.add(node, "file-write", "blocking", "open with computed arguments")
        elif not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
            self.add(node, "file-write", "blocking", "open with a computed mode")
        elif set(mode.value) & set("wax+"):
            self.add(node, "file-write", "blocking", f"open(..., {mode.value!r}) writes a file")
        else:
            self.add(node, "file-read", "warning", "open reads a file")

    def _numpy_load(self, node: ast.AST, call: ast.Call | None, name: str) -> None:
        keywords = call.keywords if call is not None else []
        flag = next((k.value for k in keywords if k.arg in ("allow_pickle", None)), None)
        safe = flag is None or (isinstance(flag, ast.Constant) and flag.value is False)
        if call is None or not safe:
            self.add(node, "unsafe-deserialisation", "blocking", "numpy.load with allow_pickle runs pickles")
        else:
            self.add(node, "file-read", "warning", "numpy.load reads a file")

    def _attr_func(self, node: ast.AST, call: ast.Call | None, name: str) -> None:
        arg = call.args[1] if call is not None and len(call.args) > 1 else None
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            self.add(node, "dynamic-attribute", "blocking", f"{name} with a computed attribute name")
        elif arg.value.startswith("__"):
            self.add(node, "dunder-attribute", "blocking", f"{name} of the special attribute {arg.value}")

    def _getter(self, node: ast.AST, call: ast.Call | None, name: str) -> None:
        names = call.args[:1] if call is not None and name == "methodcaller" else (call.args if call else [])
        literal = all(isinstance(a, ast.Constant) and isinstance(a.value, str) and "__" not in a.value for a in names)
        if call is None or not names or not literal:
            self.add(node, "dynamic-attribute", "blocking", f"operator.{name} with computed or special names")


def review_source(path: str, source: bytes, local_modules: set[str] | None = None) -> list[Finding]:
    """The findings of one Python file."""
    cookie = CODING_RE.search(b"\n".join(source.splitlines()[:2]))
    declared = cookie.group(1).decode("ascii", "replace").lower().replace("_", "-") if cookie else "utf-8"
    if declared not in ("utf-8", "utf8"):
        return [Finding(path, 1, 1, "encoding", "blocking", "source encodings other than UTF-8 are refused")]
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [
            Finding(
                path, source[: exc.start].count(b"\n") + 1, 1, "encoding", "blocking", "the file is not valid UTF-8"
            )
        ]
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 1, exc.offset or 1, "syntax-error", "blocking", f"syntax error: {exc.msg}")]
    except ValueError as exc:  # e.g. NUL bytes
        return [Finding(path, 1, 1, "syntax-error", "blocking", f"cannot parse: {exc}")]
    return _Checker(path, local_modules or set()).check(tree)


def _local_modules(files: dict[str, bytes]) -> set[str]:
    names = set()
    for path in files:
        top = path.split("/")[0]
        names.add(top.removesuffix(".py") if "/" not in path else top)
    return names


def hidden_text(path: str, data: bytes) -> list[Finding]:
    """Characters that make a file read differently than it runs: bidi controls ("Trojan Source"),
    zero-width and other invisible characters, anywhere in any file (code, manifest, names,
    descriptions, data files); and, in Python, identifiers with non-ASCII letters, which can look
    like another name (Python folds a fullwidth `eval` to `eval`; a Cyrillic `a` is not a Latin one)."""
    text = data.decode("utf-8", "replace")
    findings = []
    hidden = hidden_characters(text)
    for offset, char, what in hidden[:MAX_HIDDEN_FINDINGS]:
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        findings.append(
            Finding(
                path,
                line,
                col,
                "hidden-character",
                "blocking",
                f"{marker(char)} is {what}: the text is not what the page seems to show",
            )
        )
    if len(hidden) > MAX_HIDDEN_FINDINGS:
        findings.append(
            Finding(
                path,
                1,
                1,
                "hidden-character",
                "blocking",
                f"{len(hidden) - MAX_HIDDEN_FINDINGS} more hidden characters in this file",
            )
        )
    if path.endswith(".py"):
        findings.extend(_confusable_names(path, text))
    return findings


def _confusable_names(path: str, text: str) -> list[Finding]:
    findings: list[Finding] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return findings  # the syntax check reports it
    for tok in tokens:
        if tok.type == tokenize.NAME and not tok.string.isascii():
            folded = unicodedata.normalize("NFKC", tok.string)
            shown = "".join(c if c.isascii() else marker(c) for c in tok.string)
            reads = f" (Python reads it as {folded})" if folded.isascii() else ""
            findings.append(
                Finding(
                    path,
                    tok.start[0],
                    tok.start[1] + 1,
                    "confusable-identifier",
                    "blocking",
                    f"the name {shown} has non-ASCII letters{reads}: it can look like another name",
                )
            )
            if len(findings) >= MAX_HIDDEN_FINDINGS:
                break
    return findings


def review(bundle: Bundle) -> Report:
    """Review every file of a bundle for hidden characters, every .py file's code (plus the entry's
    hook), and return the report."""
    report = Report(files=sorted(bundle.files))
    local = _local_modules(bundle.files)
    for path in report.files:
        report.findings.extend(hidden_text(path, bundle.files[path]))
        if path.endswith(".py"):
            report.findings.extend(review_source(path, bundle.files[path], local))
    entry, hook = bundle.manifest.get("entry"), HOOK_BY_KIND.get(str(bundle.manifest.get("kind")))
    if (
        entry in bundle.files
        and hook
        and not any(f.file == entry and f.rule in ("syntax-error", "encoding") for f in report.findings)
    ):
        tree = ast.parse(bundle.files[entry].decode("utf-8"))
        if not any(isinstance(n, ast.FunctionDef) and n.name == hook for n in tree.body):
            message = f"the entry defines no top-level {hook}() for a {bundle.kind} plugin"
            report.findings.append(Finding(entry, 1, 1, "missing-hook", "warning", message))
    report.findings.sort()
    return report
