"""The docs' generated reference (docs/_generated) matches the code it is generated from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consumer.config import Settings
from consumer.tools.reference import GENERATED_DIR, config_tables, render_reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.mark.parametrize("name", sorted(render_reference(ROOT / "schemas")))
def test_generated_fragment_on_disk_matches_the_code(name: str) -> None:
    path = ROOT / GENERATED_DIR / name
    assert path.exists(), f"{GENERATED_DIR}/{name} is missing: run `make reference`"
    assert path.read_text(encoding="utf-8") == render_reference(ROOT / "schemas")[name], (
        f"{GENERATED_DIR}/{name} is stale (the code changed): run `make reference`"
    )


def test_generated_dir_holds_only_generated_files() -> None:
    on_disk = {path.name for path in (ROOT / GENERATED_DIR).iterdir()}
    assert on_disk == set(render_reference(ROOT / "schemas")), "run `make reference`"


def test_every_config_key_is_in_the_reference() -> None:
    reference = (ROOT / GENERATED_DIR / "configuration.md").read_text(encoding="utf-8")
    for table in config_tables(Settings):
        for name in table.model.model_fields:
            assert f"| `{name}` |" in reference, f"[{table.path}] {name}"
    assert '`[providers.NAME]` with `kind = "mvmnt"`' in reference
    assert "`[processing.retry]`" in reference


def test_every_fragment_is_included_by_a_page() -> None:
    pages = "".join(path.read_text(encoding="utf-8") for path in DOCS.glob("*.md"))
    included = set(re.findall(r'--8<-- "docs/_generated/([^"]+)"', pages))
    assert included == set(render_reference(ROOT / "schemas"))


def test_every_example_file_is_shown_in_the_docs() -> None:
    pages = "".join(path.read_text(encoding="utf-8") for path in DOCS.glob("*.md"))
    for example in (ROOT / "examples").glob("*.json"):
        assert f'--8<-- "examples/{example.name}"' in pages, example.name
