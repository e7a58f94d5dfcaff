"""The committed generated modules match proto/ (regenerate: make proto)."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    gen = _gen_module()
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in gen.generate(tmp_path)}
    committed_root = gen.OUT
    stale = [
        str(rel) for rel, data in fresh.items()
        if not (committed_root / rel).exists() or (committed_root / rel).read_bytes() != data
    ]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
    committed = {
        p.relative_to(committed_root) for p in committed_root.rglob("*")
        if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    }
    assert committed == {rel for rel in fresh if rel.name != "__init__.py"}
