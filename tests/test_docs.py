"""The code in README.md and docs/ runs, and the pages name public modules only (issue 11, item 6).

Convention for code blocks in the Markdown pages:

- A ```python block is executed by this test. The blocks of one page run in order in one namespace, so a page reads as
  one session: a later block uses what an earlier one defined. Each page starts from a fresh namespace, seeded RNGs
  (tests/conftest.py) and an empty working directory; studies a page registers are removed afterwards.
- A block that cannot run in the test suite (it needs data files, a GPU or minutes of compute) is fenced
  ```python-skip, and its first line is a comment that says why (``# not run: ...``). Keep them rare: a shorter
  variant that runs is better. Skipped blocks are still parsed and checked for private imports.
- Any other fence whose language starts with ``py`` (``py``, ``python3``, ``pycon``, ...) is refused, so that a typo
  cannot skip a block silently. Other languages (``bash``, ``toml``, ``text``, no language) are not Python and are
  left alone.
- docs/audit.md is generated (``make audit-docs``) and checked like any other page.

"Public" means a dotted name under ``isotorch`` none of whose parts starts with an underscore
(``isotorch.params.align``, not ``isotorch.params._align``), in code and in the prose around it.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import isotorch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN, SKIP = "python", "python-skip"
SKIP_REASON = "# not run:"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_DOTTED = re.compile(r"\bisotorch(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, the line of its first code line (1-based) and its code."""

    lang: str
    line: int
    code: str


def extract_blocks(text: str, label: str = "<page>") -> list[Block]:
    """Every fenced block of a Markdown text, in order; refuses unclosed fences and unknown Python-like fences."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, lang = match["fence"], match["info"].strip().split(" ")[0].lower()
        start = i + 1
        j = start
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        if j == len(lines):
            raise ValueError(f"{label}:{i + 1}: code fence {fence} is never closed")
        if lang.startswith("py") and lang not in (RUN, SKIP):
            raise ValueError(f"{label}:{i + 1}: fence language {lang!r}: use {RUN!r} (runs) or {SKIP!r} (does not)")
        code = textwrap.dedent("\n".join(lines[start:j]))
        if lang == SKIP and not code.lstrip().startswith(SKIP_REASON):
            raise ValueError(f"{label}:{i + 1}: a {SKIP} block must start with a comment {SKIP_REASON!r} saying why")
        blocks.append(Block(lang, start + 1, code))
        i = j + 1
    return blocks


def run_blocks(text: str, label: str) -> int:
    """Execute the page's python blocks in order in one fresh module namespace; return how many ran.

    Tracebacks point at the page: the code is compiled under the page's name with its own line numbers.
    """
    module = types.ModuleType("isotorch_docs_page")
    sys.modules[module.__name__] = module  # dataclasses and pickling look classes' modules up here
    count = 0
    try:
        for block in extract_blocks(text, label):
            if block.lang != RUN:
                continue
            code = compile("\n" * (block.line - 1) + block.code, label, "exec")
            try:
                exec(code, module.__dict__)
            except Exception as err:
                raise AssertionError(f"{label}: the python block at line {block.line} failed: {err!r}") from err
            count += 1
    finally:
        del sys.modules[module.__name__]
    return count


def private_names(text: str, label: str = "<page>") -> list[str]:
    """Private isotorch names a page uses: dotted names in code or prose, and ``from isotorch... import _x``."""
    found = [name for name in _DOTTED.findall(text) if any(part.startswith("_") for part in name.split(".")[1:])]
    for block in extract_blocks(text, label):
        if block.lang not in (RUN, SKIP):
            continue
        for node in ast.walk(ast.parse(block.code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "isotorch":
                found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return [name for name in found if not name.endswith("__version__")]


def _label(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture
def page_sandbox(tmp_path, monkeypatch):
    """An empty working directory; afterwards the study registry as it was and no open figures."""
    from isotorch.studies import _registry

    monkeypatch.chdir(tmp_path)
    before = dict(_registry._REGISTRY)
    yield
    _registry._REGISTRY.clear()
    _registry._REGISTRY.update(before)
    if "matplotlib.pyplot" in sys.modules:  # figures a page opened (e.g. SRMResult.plot())
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize("page", PAGES, ids=_label)
def test_page_code_runs(page, page_sandbox):
    run_blocks(page.read_text(encoding="utf-8"), _label(page))


@pytest.mark.parametrize("page", PAGES, ids=_label)
def test_page_names_public_modules_only(page):
    assert private_names(page.read_text(encoding="utf-8"), _label(page)) == []


def test_pages_have_runnable_code_and_few_skips():
    blocks = {page: extract_blocks(page.read_text(encoding="utf-8"), _label(page)) for page in PAGES}
    ran = sum(b.lang == RUN for bs in blocks.values() for b in bs)
    skipped = [(_label(p), b.line) for p, bs in blocks.items() for b in bs if b.lang == SKIP]
    assert any(b.lang == RUN for b in blocks[ROOT / "README.md"]), "the README tour must be a python block that runs"
    assert ran >= 5, ran
    assert len(skipped) <= max(1, ran // 5), f"too many {SKIP} blocks: {skipped}"


def test_api_reference_has_a_page_per_public_module():
    modules = sorted(name for name in isotorch.__all__ if isinstance(getattr(isotorch, name), types.ModuleType))
    modules.append("studies")  # imported on demand (it pulls in the study registry), public all the same
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for name in modules:
        page = ROOT / "docs" / "api" / f"{name}.md"
        assert page.is_file(), page
        assert f"::: isotorch.{name}" in page.read_text(encoding="utf-8"), page
        assert f"api/{name}.md" in config, f"mkdocs.yml nav lacks api/{name}.md"


# The harness itself, with negative controls: a check that cannot fail is a defect.

_SAMPLE = """
Intro `isotorch.groups.get`.

```python
import torch
total = torch.tensor(2.0)
```

```bash
make test
```

```python-skip
# not run: needs the MNIST files
load_the_world()
```

  ```python
  total = total * 3
  ```
"""


def test_harness_runs_python_blocks_in_one_namespace_and_skips_the_rest():
    blocks = extract_blocks(_SAMPLE)
    assert [b.lang for b in blocks] == [RUN, "bash", SKIP, RUN]
    assert [b.line for b in blocks] == [5, 10, 14, 19]
    assert blocks[3].code == "total = total * 3"  # indented fences are dedented
    assert run_blocks(_SAMPLE, "sample.md") == 2  # the skipped block would raise NameError if it ran


def test_harness_reports_the_failing_line_and_keeps_pages_apart():
    with pytest.raises(AssertionError, match=r"sample\.md: the python block at line 19 failed: NameError") as info:
        run_blocks(_SAMPLE.replace("total = torch.tensor(2.0)", "pass"), "sample.md")
    frames = traceback.extract_tb(info.value.__cause__.__traceback__)
    assert (frames[-1].filename, frames[-1].lineno) == ("sample.md", 19)  # the traceback points into the page
    with pytest.raises(AssertionError, match="NameError"):  # a page does not see another page's names
        run_blocks("```python\ntotal\n```\n", "other.md")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("```py\nx = 1\n```\n", "fence language 'py'"),
        ("```python3\nx = 1\n```\n", "fence language 'python3'"),
        ("```python-skip\nx = 1\n```\n", "must start with a comment"),
        ("```python\nx = 1\n", "never closed"),
    ],
)
def test_harness_refuses_fences_that_would_skip_silently(text, message):
    with pytest.raises(ValueError, match=message):
        extract_blocks(text)


def test_private_names_are_found_in_code_and_prose():
    public = "```python\nfrom isotorch.params import align\nimport isotorch as it\nit.__version__\n```\n"
    assert private_names(public + "See `isotorch.studies.run_study`.") == []
    assert private_names("```python\nfrom isotorch.params._align import align\n```\n") == ["isotorch.params._align"]
    assert private_names("```python\nfrom isotorch.studies import _data\n```\n") == ["isotorch.studies._data"]
    assert private_names("```python-skip\n# not run: x\nimport isotorch.studies._stats\n```\n") == [
        "isotorch.studies._stats"
    ]
    assert private_names("Call `isotorch.studies._runner.run_study(...)`.") == ["isotorch.studies._runner.run_study"]
