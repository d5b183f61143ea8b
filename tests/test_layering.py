"""The layering of the packages (scripts/import_graph.py): no import cycles, no lower layer
importing a higher one, lazy and TYPE_CHECKING imports included."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and annotations look their module up
    spec.loader.exec_module(module)
    return module


def test_the_project_has_no_cycle_and_no_upward_import(capsys):
    assert _checker().main(["--check", "--root", str(ROOT)]) == 0, capsys.readouterr().out


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize("importing", [
    "from fabtier.pipeline import Pipeline\n",
    "def later():\n    from lifecycle import jobs\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fabtier.pipeline\n",
])
def test_a_lower_layer_importing_a_higher_one_is_refused(tmp_path, capsys, importing):
    root = _tree(tmp_path, {"core/__init__.py": "", "tiers/__init__.py": "", "tiers/ring.py": importing,
                            "lifecycle/__init__.py": "", "lifecycle/jobs.py": "",
                            "fabtier/__init__.py": "", "fabtier/pipeline.py": "import tiers.ring\n"})
    assert _checker().main(["--check", "--root", str(root)]) == 1
    assert "upward import: tiers.ring (layer 2)" in capsys.readouterr().out


def test_a_cycle_within_a_package_is_refused(tmp_path, capsys):
    root = _tree(tmp_path, {"tiers/__init__.py": "", "tiers/a.py": "from tiers import b\n",
                            "tiers/b.py": "def f():\n    from . import a\n"})
    assert _checker().main(["--check", "--root", str(root)]) == 1
    assert "import cycle: tiers.a -> tiers.b" in capsys.readouterr().out


def test_downward_imports_pass(tmp_path):
    root = _tree(tmp_path, {"core/__init__.py": "", "core/errors.py": "", "tiers/__init__.py": "",
                            "tiers/ring.py": "from core.errors import x\n", "fabtier/__init__.py": "",
                            "fabtier/pipeline.py": "import tiers.ring\nfrom core import errors\n"})
    assert _checker().main(["--check", "--root", str(root)]) == 0
