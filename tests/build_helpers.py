"""setup.py's compiler flags, for the tests that compile the C core themselves."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_flags():
    """(CFLAGS, VARIANTS, X86_V3) of setup.py, read as literals: importing setup.py would
    need Cython and setuptools, which an installed wheel's test run may not have."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in ("CFLAGS", "X86_V3", "X86_V4", "VARIANTS"):
                found[name] = _value(node.value, found)
    return found["CFLAGS"], found["VARIANTS"], found["X86_V3"]


def _value(node, names):
    """A literal, possibly built from names defined before it (X86_V3 + [...])."""
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left, names) + _value(node.right, names)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e, names) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    return ast.literal_eval(node)
