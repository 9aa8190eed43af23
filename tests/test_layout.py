"""The package's shape: no import cycles, no module past ~400 lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_cycles():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_cycles.py")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The checker is not vacuous: two modules importing each other are reported."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import import_cycles
    finally:
        sys.path.pop(0)
    assert import_cycles.cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert import_cycles.cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src" / "tokenleap").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
