"""The README's Python tour runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, encode


def test_python_tour_runs(tmp_path: Path) -> None:
    from skimage import data

    (tmp_path / "chelsea.png").write_bytes(encode(data.chelsea(), "PNG"))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    tour = next(block for block in blocks if "inferd.convert(" in block)
    result = subprocess.run([sys.executable, "-c", tour], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "max_abs_diff" in result.stdout and "'logits'" in result.stdout
    assert (tmp_path / "models" / "tinynet" / "manifest.json").is_file()
