"""The README's Python API snippet runs as written (in a scratch directory) and passes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    api = [b for b in blocks if "import lnm_deploy" in b]
    assert len(api) == 1, "the README has one Python API snippet"
    return api[0]


@pytest.mark.slow
@pytest.mark.lava
def test_readme_api_snippet_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lava")
    code = _snippet()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ns: dict[str, object] = {}
        exec(compile(code, str(README), "exec"), ns)  # our own README
    finally:
        os.chdir(cwd)
    report = ns["report"]
    assert report.passed, report.reasons  # type: ignore[attr-defined]
    assert report.to_dict()["backends"]["lava"]["bit_exact"] is True  # type: ignore[attr-defined]
    assert report.to_dict()["backends"]["lava"]["samples"] == 8  # type: ignore[attr-defined]
    assert (tmp_path / "model.nir").is_file()
