"""The JSON report a benchmark writes: its figures and the command that produced them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_report(path: Path, **fields: Any) -> Path:
    """Write ``{"command": <this command line>, **fields}`` to ``path`` as indented JSON."""
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
