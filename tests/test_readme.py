"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(_python_blocks()) >= 3


def test_readme_python_examples_run_in_order() -> None:
    import torch

    namespace: dict[str, object] = {}
    blocks = _python_blocks()
    for block in blocks:
        if "retrieval_metrics(test_embeddings" in block:
            namespace["test_embeddings"] = torch.randn(40, 8)
            namespace["test_labels"] = torch.arange(4).repeat(10)
        try:
            exec(compile(block, str(README), "exec"), namespace)
        except Exception as error:  # pragma: no cover - the message is the point
            pytest.fail(f"README example failed: {error!r}\n{block}")
