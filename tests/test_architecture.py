"""The architecture holds: the import contracts of pyproject.toml ([tool.importlinter])."""

from __future__ import annotations

import subprocess

from tests.helpers import ROOT, VENV_BIN


def test_import_contracts_are_kept() -> None:
    """Every layer imports only the layers below it (TYPE_CHECKING imports included); stores
    and brokers know nothing above them; codecs do no I/O."""
    result = subprocess.run([str(VENV_BIN / "lint-imports"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
