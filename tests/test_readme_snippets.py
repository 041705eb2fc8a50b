"""The README's "Use it from timm / Detectron2 / plain PyTorch" snippets run as written, in order, in one
folder; each checks its front door's features against build_eva_vit's."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use it from timm / Detectron2 / plain PyTorch"


def snippets() -> list[str]:
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    body = text.split(SECTION, 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    return re.findall(r"^```python\n(.*?)^```", body, flags=re.M | re.S)


def test_readme_has_a_snippet_per_front_door():
    found = snippets()
    assert len(found) == 3
    assert "build_eva_vit(" in found[0] and "load_checkpoint(" in found[0]
    assert "timm.create_model(" in found[1] and "features_only=True" in found[1]
    assert "EVAViTNet" in found[2] and "export_state_dict(" in found[2]


def test_readme_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, code in enumerate(snippets()):
        try:
            exec(compile(code, f"README.md snippet {i + 1}", "exec"), {"__name__": f"readme_snippet_{i + 1}"})
        except Exception as e:  # name the snippet in the failure
            pytest.fail(f"README.md snippet {i + 1} failed: {type(e).__name__}: {e}")
    assert (tmp_path / "eva_tiny_det.safetensors").is_file() and (tmp_path / "features.pt").is_file()
