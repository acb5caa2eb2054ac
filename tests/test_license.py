"""The repository carries the licence its metadata declares."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_declared_apache_licence_is_in_the_repository():
    declared = re.search(r'^license = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
