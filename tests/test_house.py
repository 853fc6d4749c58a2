"""The house drawing (DESIGN.md): imports run downward, with no circle.

Every `import` in the package, at module level or inside a function, is read
from the source (ast) and checked against the rank of the part it comes from:
a part may import its own modules and lower parts, never a higher one.
"""

import ast
import pathlib

import keras_attention

ROOT = pathlib.Path(keras_attention.__file__).parent
# Lower first. A module not named here is a part of its own folder (layers/, models/, ...).
RANKS = {
    "_compat": 0,
    "_checks": 0,
    "_io": 0,
    "_optional": 0,
    "_native_logs": 0,
    "_inputs": 0,
    "_keras_hub": 0,
    "backend": 1,
    "layers": 2,
    "data": 2,
    "losses": 3,
    "backbones": 3,
    "models": 3,
    "distribute": 3,
    "visualize": 3,
    "quantization": 4,
    "_deploy": 4,
    "tflite": 5,
    "export": 6,
    "demo": 7,
    "cli": 8,
    "__init__": 9,
}


def _part(module):
    """The part of `keras_attention.x.y` ('x'), or None outside the package."""
    names = module.split(".")
    if names[0] != "keras_attention":
        return None
    return names[1] if len(names) > 1 else "__init__"


def _imports(path):
    module = "keras_attention." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield f"{base}.{node.module}" if node.module else base
            elif node.module == "keras_attention":  # `from keras_attention import quantization`
                yield from (f"keras_attention.{alias.name}" for alias in node.names)
            else:
                yield node.module


def upward_imports():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = "keras_attention." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = _part(module.removesuffix(".__init__"))
        for imported in _imports(path):
            other = _part(imported)
            if other is None or other == own or other not in RANKS:
                continue
            if RANKS[other] > RANKS[own] or (RANKS[other] == RANKS[own] and other != own):
                found.append(f"{module} imports {imported}")
    return found


def test_every_part_has_a_rank():
    parts = {
        _part("keras_attention." + ".".join(p.relative_to(ROOT).with_suffix("").parts)) for p in ROOT.rglob("*.py")
    }
    assert parts <= set(RANKS), sorted(parts - set(RANKS))


def test_imports_run_downward():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """Control: a layer importing the QAT package is reported."""
    planted = ROOT / "layers" / "_planted_for_test.py"
    planted.write_text("def f():\n    from keras_attention.quantization import quantize_model\n")
    try:
        assert upward_imports() == ["keras_attention.layers._planted_for_test imports keras_attention.quantization"]
    finally:
        planted.unlink()
