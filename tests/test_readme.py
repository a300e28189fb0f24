"""README.md tells the truth: every setting is documented, the two set-up commands exist."""

from __future__ import annotations

import re

from captify_ws.config import Settings
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    """Each CAPTIFY_WS_* variable and flag appears in the configuration table."""
    for option in Settings.options():
        assert f"`{Settings.env_name(option.name)}`" in README, option.name
        assert "--" + option.name.replace("_", "-") in README, option.name


def test_quick_start_targets_exist() -> None:
    """`make serve` and `make test` are Makefile targets, and CI runs `make test`."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M)
    assert re.search(r"^test:", makefile, re.M)
    assert "make serve" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
