"""The documentation keeps up with the code: every public name has a docstring and a section in
docs/api.md, every figure the docs embed exists, and the code of the layer guide runs."""
import ast
import inspect
import re
from pathlib import Path

import pytest

import jaxcnn
from jaxcnn import show

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def attribute_docstrings() -> dict[str, str]:
    """``NAME = value`` followed by a string literal, in every module of the package: the
    docstring of a constant (``NHWC``, ``softmax_cross_entropy``), which Python does not keep."""
    found = {}
    for path in (ROOT / "jaxcnn").glob("*.py"):
        body = ast.parse(path.read_text()).body
        for stmt, following in zip(body, body[1:]):
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                targets = (stmt.targets if isinstance(stmt, ast.Assign) else
                           [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = following.value.value
    return found


def docstring(name: str, obj) -> str | None:
    if inspect.ismodule(obj) or inspect.isroutine(obj) or inspect.isclass(obj):
        doc = obj.__doc__
        # NamedTuple and dataclass make up "Name(field, ...)" for a class without a docstring
        if doc and not doc.startswith(f"{getattr(obj, '__name__', name)}("):
            return doc
        return None
    return attribute_docstrings().get(name)          # an instance: its attribute docstring


def public():
    """``(module label, name, object)`` for ``jaxcnn.__all__`` and ``jaxcnn.show.__all__``."""
    return ([("jc", n, getattr(jaxcnn, n)) for n in jaxcnn.__all__]
            + [("show", n, getattr(show, n)) for n in show.__all__])


@pytest.mark.parametrize("label, name, obj", public(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_public_name_has_a_docstring(label, name, obj):
    doc = docstring(name, obj)
    assert doc and len(doc.strip()) > 10, f"{label}.{name} has no docstring of its own"


def test_every_public_name_has_a_section_in_the_api_doc():
    api = (DOCS / "api.md").read_text()
    headings = [line for line in api.splitlines() if re.match(r"#{2,4} ", line)]
    missing = []
    for label, name, _ in public():
        prefix = r"(jc|jaxcnn)" if label == "jc" else r"(show|jaxcnn\.show)"
        if not any(re.search(rf"`{prefix}\.{re.escape(name)}[`(]", h) for h in headings):
            missing.append(f"{label}.{name}")
    assert not missing, f"docs/api.md has no section for {', '.join(missing)}"


def test_api_doc_covers_the_zoo():
    api = (DOCS / "api.md").read_text()
    for name in (*jaxcnn.zoo.ARCHS, "get", "ARCHS"):
        assert f"zoo.{name}" in api, name


def test_embedded_figures_exist():
    pages = list(DOCS.glob("*.md"))
    assert {"index.md", "api.md", "examples.md", "adding_a_layer.md"} <= {p.name for p in pages}
    embedded = 0
    for page in pages:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} embeds missing {target}"
            embedded += 1
    assert embedded >= 10


def test_examples_page_names_every_example():
    text = (DOCS / "examples.md").read_text()
    for example in (ROOT / "examples").glob("*.py"):
        assert f"examples/{example.name}" in text, example.name


def test_the_layer_guide_runs(capsys):
    """The python blocks of docs/adding_a_layer.md, in order, as a reader would paste them."""
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "adding_a_layer.md").read_text(),
                        re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict = {}
    exec(compile("\n".join(blocks), "docs/adding_a_layer.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "all 6 gradients agree" in out
    assert "FAILED: first wrong layer is 0 (Scale)" in out
