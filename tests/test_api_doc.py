"""The documentation keeps up with the code: every public name -- ``jaxcnn.__all__`` and the
``__all__`` of every submodule a user imports -- has a docstring and a section in docs/api.md,
the zoo's descriptions list the layers the code builds, every figure the docs embed exists, and
the code of the layer guide runs."""
import ast
import importlib
import inspect
import re
from pathlib import Path

import jax
import pytest

import jaxcnn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The submodules users import by name, each with an ``__all__``.  (``jaxcnn.summary`` is shadowed
# by the function ``jaxcnn.summary``: modules are looked up with importlib, never as attributes.)
SUBMODULES = ("show", "data", "train", "distributed", "audit", "zoo", "summary", "precision")

# Public-looking top-level names deliberately left out of a module's ``__all__``.
NOT_EXPORTED = {
    "show": {"main"},            # the ``python -m jaxcnn.show`` entry point
}


def module(label: str):
    return importlib.import_module(f"jaxcnn.{label}")


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
    """``(module label, name, object)`` for ``jaxcnn.__all__`` and each submodule's ``__all__``."""
    rows = [("jc", n, getattr(jaxcnn, n, None)) for n in jaxcnn.__all__]
    for label in SUBMODULES:
        mod = module(label)
        rows += [(label, n, getattr(mod, n, None)) for n in getattr(mod, "__all__", ())]
    return rows


def needs_docstring(label: str, obj) -> bool:
    """Functions, classes and modules everywhere; constants only in ``jaxcnn.__all__`` and
    ``jaxcnn.show`` (elsewhere a constant is documented in docs/api.md alone)."""
    return (inspect.ismodule(obj) or inspect.isroutine(obj) or inspect.isclass(obj)
            or label in ("jc", "show"))


def test_every_all_list_exists_and_names_real_attributes():
    for label in SUBMODULES:
        assert isinstance(getattr(module(label), "__all__", None), list), \
            f"jaxcnn.{label} has no __all__ list"
    missing = [f"{label}.{name}" for label, name, obj in public() if obj is None]
    assert not missing, f"__all__ names attributes that do not exist: {', '.join(missing)}"
    for label in ("jc", *SUBMODULES):
        names = jaxcnn.__all__ if label == "jc" else module(label).__all__
        assert len(names) == len(set(names)), f"{label}.__all__ repeats a name"


def defined_names(label: str) -> set[str]:
    """Top-level ``def``, ``class`` and ``NAME = ...`` of a submodule, without a leading ``_``."""
    names = set()
    for stmt in ast.parse(Path(module(label).__file__).read_text()).body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("label", SUBMODULES)
def test_all_lists_every_public_definition(label):
    """A new public function or class must be exported -- and so documented -- or renamed
    with a leading underscore."""
    left_out = defined_names(label) - set(module(label).__all__) - NOT_EXPORTED.get(label, set())
    assert not left_out, (f"jaxcnn.{label} defines {', '.join(sorted(left_out))} but its "
                          f"__all__ does not list them")


@pytest.mark.parametrize("label, name, obj",
                         [row for row in public() if needs_docstring(row[0], row[2])],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_public_name_has_a_docstring(label, name, obj):
    doc = docstring(name, obj)
    assert doc and len(doc.strip()) > 10, f"{label}.{name} has no docstring of its own"


def heading_prefixes(label: str, name: str, obj) -> str:
    """The module prefixes a section heading may use for ``label.name``: its own module, and
    ``jc`` for the same object re-exported in ``jaxcnn.__all__``."""
    prefixes = ["jc", "jaxcnn"] if label == "jc" else [label, f"jaxcnn\\.{label}"]
    if label != "jc" and name in jaxcnn.__all__ and getattr(jaxcnn, name) is obj:
        prefixes += ["jc", "jaxcnn"]
    return "(" + "|".join(prefixes) + ")"


def api_headings() -> list[str]:
    return [line for line in (DOCS / "api.md").read_text().splitlines()
            if re.match(r"#{2,4} ", line)]


def test_every_public_name_has_a_section_in_the_api_doc():
    headings = api_headings()
    missing = []
    for label, name, obj in public():
        prefix = heading_prefixes(label, name, obj)
        if not any(re.search(rf"`{prefix}\.{re.escape(name)}[`(]", h) for h in headings):
            missing.append(f"{label}.{name}")
    assert not missing, f"docs/api.md has no section for {', '.join(missing)}"


def test_every_section_of_the_api_doc_names_a_public_name():
    """No section outlives its name: every ``jc.x`` / ``module.x`` in a heading is exported."""
    labels = "|".join(("jc", "jaxcnn", *SUBMODULES))
    stale = []
    for heading in api_headings():
        for path in re.findall(rf"`((?:{labels})(?:\.\w+)+)[`(]", heading):
            parts = path.split(".")
            parts = (["jaxcnn", *parts[1:]] if parts[0] in ("jc", "jaxcnn")
                     else ["jaxcnn", *parts])
            if len(parts) == 2 and parts[1] in SUBMODULES:
                continue                                       # a module's own heading
            if len(parts) == 2:
                ok = parts[1] in jaxcnn.__all__
            else:
                ok = (len(parts) == 3 and parts[1] in SUBMODULES
                      and parts[2] in module(parts[1]).__all__)
            if not ok:
                stale.append(path)
    assert not stale, f"docs/api.md has sections for names nobody exports: {', '.join(stale)}"


def api_section(pattern: str) -> str:
    """The text of the docs/api.md section whose heading matches ``pattern``, to the next
    heading."""
    text = (DOCS / "api.md").read_text()
    match = re.search(rf"^#{{2,4}} [^\n]*{pattern}[^\n]*$(.*?)(?=^#{{1,4}} |\Z)", text,
                      re.MULTILINE | re.DOTALL)
    assert match, f"docs/api.md has no section {pattern}"
    return match.group(1)


def layer_line(net) -> str:
    """A zoo net's layers, as docs/api.md writes them: ``conv3x3(32, SAME) -> relu -> ...``;
    a nested ``serial`` in parentheses, ``parallel(branch | branch)`` for branches."""
    parts = []
    for layer in net.layers:
        cfg = dict(layer.config)
        if cfg.get("kind") == "serial":
            text = f"({layer_line(layer)})"
        elif cfg.get("kind") == "parallel":
            text = "parallel(" + " | ".join(
                layer_line(branch) if branch.layers else layer_line(jaxcnn.serial(branch))
                for branch in layer.layers) + ")"
        elif cfg.get("kind") in ("window", "transposed_window"):
            kh, kw = cfg["size"]
            if "features" in cfg:
                conv = "conv" if cfg["kind"] == "window" else "convtranspose"
                text = f"{conv}{kh}x{kw}({cfg['features']}, {cfg['padding']})"
                extras = ([f"stride {cfg['strides']}"] * (cfg["strides"] != (1, 1))
                          + [f"dilation {cfg['dilation']}"] * (cfg["dilation"] != (1, 1))
                          + [f"groups {cfg['groups']}"] * (cfg["groups"] != 1))
                text += "".join(f" {e}" for e in extras)
            else:
                text = f"{layer.name[:3].lower()}pool{kh}x{kw}"
                if cfg["strides"] != cfg["size"]:
                    text += f" stride {cfg['strides']}"
                if cfg["padding"] != "VALID":
                    text += f" {cfg['padding']}"
        elif cfg.get("kind") == "dense":
            text = f"dense({cfg['features']})"
        else:
            text = layer.name.lower()
        parts.append(text)
    return " -> ".join(parts)


@pytest.mark.parametrize("arch", sorted(jaxcnn.zoo.ARCHS) + ["autoencoder"])
def test_api_doc_lists_the_layers_of_each_zoo_net(arch):
    """Each zoo section spells out the layers the code builds at the default input shape."""
    make = jaxcnn.zoo.ARCHS.get(arch) or getattr(jaxcnn.zoo, arch)
    line = layer_line(make())
    section = api_section(rf"`zoo\.{make.__name__}`")
    assert f"`{line}`" in section, f"the zoo.{arch} section of docs/api.md lacks `{line}`"


def test_embedded_figures_exist():
    pages = list(DOCS.glob("*.md"))
    assert {"index.md", "api.md", "examples.md", "adding_a_layer.md"} <= {p.name for p in pages}
    embedded = 0
    for page in pages:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} embeds missing {target}"
            embedded += 1
    assert embedded >= 10


def test_the_docs_hold_no_control_characters():
    """A LaTeX command written through a Python string without ``r`` loses its backslash:
    ``\\top`` becomes a tab and ``op`` (``a^\\top`` renders as ``a^op``), ``\\frac`` a form feed."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        bad = re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text)        # all but the newline
        assert bad is None, (f"{path.name}:{text.count(chr(10), 0, bad.start()) + 1}: control "
                             f"character {bad.group()!r}")


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


def test_the_readme_snippet_runs(capsys):
    """The README's Python block runs as written, and its audit passes."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (4, 10)
    assert "gradients agree" in capsys.readouterr().out


def test_the_index_snippet_runs(capsys):
    """docs/index.md's Python block runs as written, and its audit passes."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "index.md").read_text(),
                        re.DOTALL)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/index.md", "exec"), namespace)
    assert jax.tree.structure(namespace["grads"]) == jax.tree.structure(namespace["params"])
    assert "gradients agree" in capsys.readouterr().out
