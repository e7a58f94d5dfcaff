"""The core stays pure: none of its modules can reach grpc, lmdb, psycopg or asyncio.

Each module under recallcore/core is imported in a fresh interpreter whose
import system refuses those packages, so an indirect import (through the
client library, the settings or the storage interface) fails too; and no
module of the core imports logging at all (it reports by raising).
"""

import ast
import pathlib
import subprocess
import sys

import recallcore.core

CORE = pathlib.Path(recallcore.core.__file__).parent
BLOCKED = ("grpc", "lmdb", "psycopg", "asyncio")

_PROBE = """
import importlib, importlib.abc, sys
BLOCKED = {blocked!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the pure core must not import {{name}}")
        return None

sys.meta_path.insert(0, Refuse())
for module in {modules!r}:
    importlib.import_module(module)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("ok", len({modules!r}))
"""


def core_modules() -> list[str]:
    return sorted(f"recallcore.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")


def test_every_core_module_imports_with_grpc_lmdb_psycopg_and_asyncio_refused():
    modules = ["recallcore.core", *core_modules()]
    assert "recallcore.core.operations" in modules and "recallcore.core.mirror" in modules
    probe = _PROBE.format(blocked=BLOCKED, modules=modules)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", str(len(modules))]


def test_the_probe_does_refuse_a_blocked_import():
    probe = _PROBE.format(blocked=BLOCKED, modules=["recallcore.storage.lmdb"])
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "must not import lmdb" in done.stderr


def test_no_core_module_imports_logging():
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "logging" for n in names), f"{path.name} imports logging"
