from __future__ import annotations

import subprocess
import sys

import dmlkit.data


def test_importing_data_imports_no_optional_package() -> None:
    code = "import sys, dmlkit.data; print(sorted(m for m in ('PIL', 'pandas', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_exists_and_transforms_are_reachable() -> None:
    assert len(set(dmlkit.data.__all__)) == len(dmlkit.data.__all__)
    missing = [name for name in dmlkit.data.__all__ if not hasattr(dmlkit.data, name)]
    assert missing == []
    assert dmlkit.data.transforms.Resize.__module__ == "dmlkit.data.transforms"
    for module in (dmlkit.data.idx, dmlkit.data.images, dmlkit.data.transforms, dmlkit.data.embeddings,
                   dmlkit.data.text_pairs, dmlkit.data.splits, dmlkit.data.root):  # fmt: skip
        assert [name for name in module.__all__ if not hasattr(module, name)] == []
