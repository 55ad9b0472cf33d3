"""No dead code: every function and class of the package is used by something besides the tests.

A module-level function or class counts as used when its name appears in
another of its module's lines, in another module of the package (an
`__init__` that exports it included), in a recipe or in a benchmark. A name
that only the tests call is code nobody runs, and its tests guard nothing:
delete both, or use it. The names are read from the source (ast), the uses
as whole words (a crude reading: a shared name can hide a dead function,
never flag a live one).
"""

import ast
import glob
import os
import re

import keras_gmix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(keras_gmix.__file__)))


def _read(pattern):
    """{path relative to the repository: source} of the files matching `pattern`."""
    return {
        os.path.relpath(path, ROOT): open(path, encoding="utf-8").read()
        for path in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    }


def unused_definitions(package, users):
    """`["path:line name"]` for each module-level def/class of `package` (a
    {path: source} dict) whose name appears nowhere in `package` or `users`
    but its own definition."""
    sources = {**package, **users}
    unused = []
    for path, source in package.items():
        for node in ast.parse(source).body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("__"):  # module hooks (__getattr__, __dir__)
                continue
            word = re.compile(rf"\b{re.escape(node.name)}\b")
            uses = sum(len(word.findall(text)) for text in sources.values()) - 1
            if uses == 0:
                unused.append(f"{path}:{node.lineno} {node.name}")
    return unused


def test_every_definition_is_used_outside_the_tests():
    package = _read("keras_gmix/**/*.py")
    users = {**_read("recipes/**/*.py"), **_read("benchmarks/*.py")}
    assert len(package) > 20
    assert unused_definitions(package, users) == []


def test_an_unused_function_is_found():
    package = {
        "keras_gmix/a.py": "def used():\n    pass\n\n\ndef dead():\n    return used()\n",
        "keras_gmix/b.py": "class Kept:\n    pass\n",
    }
    users = {"recipes/r.py": "from keras_gmix.b import Kept\n"}
    assert unused_definitions(package, users) == ["keras_gmix/a.py:5 dead"]
