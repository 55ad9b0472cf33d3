"""The package's layers point down, and `import keras_gmix` stays cheap.

The rule (STYLE.md, "Layers point down"): the package has two layers.

- Application: `train` (the run of `gmix-train`), `config` (its settings),
  `cli`, `compare` and `flatness_report` - programs over the library, which
  may import anything of the library and each other.
- Library: every other module, `data/` and `models/` included (they are
  building blocks the applications use: loaders and architectures, with no
  run orchestration). A library module never imports an application module,
  neither at module level nor inside a function.

And no module reaches itself through its imports, those inside functions
counted (no import circle): a function-level import hides a circle from the
interpreter until the function runs, not from the reader.

The import graph is read from the source (ast), not from a running
interpreter, so the tests see imports inside functions too.
"""

import ast
import json
import os
import subprocess
import sys

import pytest

import keras_gmix

PACKAGE_DIR = os.path.dirname(os.path.abspath(keras_gmix.__file__))
ROOT = os.path.dirname(PACKAGE_DIR)
APPLICATION = {
    "keras_gmix.train",
    "keras_gmix.config",
    "keras_gmix.cli",
    "keras_gmix.compare",
    "keras_gmix.flatness_report",
}
# Loaded by the functions that use them, never by `import keras_gmix`.
OPTIONAL_LIBRARIES = ("tensorflow_datasets", "matplotlib", "sklearn", "yaml")


def _module_name(path):
    relative = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if relative[-1] == "__init__":
        relative = relative[:-1]
    return ".".join(relative)


def _modules():
    """{module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(module, node):
    """The package modules an import node loads, as names of MODULES."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module if MODULES[module].endswith("__init__.py") else module.rsplit(".", 1)[0]
        parts = package.split(".")
        package = ".".join(parts[: len(parts) - node.level + 1])
        base = f"{package}.{base}" if base else package
    if base not in MODULES:
        return []
    # `from package import name` loads the submodule `name` when there is
    # one; otherwise `name` is an attribute of the package.
    targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    if len(targets) < len(node.names):
        targets.append(base)
    return targets


def _imports(module):
    """`(top_level, inside_functions)`: sets of package modules `module` imports."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read(), MODULES[module])
    top, inner = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).update(_resolve(module, child))
            nested = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            visit(child, nested)

    visit(tree, False)
    return top, inner


def _external_top_level_imports(module):
    """Top-level names of the libraries `module` imports outside functions."""
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read(), MODULES[module])
    names = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names.update(alias.name.split(".")[0] for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level and child.module:
                names.add(child.module.split(".")[0])
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child)

    visit(tree)
    return names


GRAPH = {module: _imports(module) for module in MODULES}


def _cycle_through(start, edges):
    """A list of modules from `start` back to `start`, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for target in sorted(edges[module]):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                stack.append((target, path + [target]))
    return None


def test_the_import_graph_is_read():
    # Guards the parser: if these edges vanished, the tests below would pass vacuously.
    assert "keras_gmix.model" in GRAPH["keras_gmix"][0]
    assert "keras_gmix.gradients" in GRAPH["keras_gmix.model"][0]
    assert "keras_gmix.train" in GRAPH["keras_gmix.cli"][1]  # inside a function
    assert "keras_gmix.models.blocks" in GRAPH["keras_gmix.models.resnet"][0]


def test_no_import_cycle():
    every_edge = {module: top | inner for module, (top, inner) in GRAPH.items()}
    cycles = [c for c in (_cycle_through(m, every_edge) for m in sorted(MODULES)) if c]
    assert not cycles, "Import cycles (imports inside functions counted): " + "; ".join(
        " -> ".join(c) for c in cycles
    )


def test_a_circle_through_a_function_level_import_is_found():
    # Guards the cycle search: the circle data/ had before DataSplits moved
    # to splits.py (datasets imported folder, folder imported datasets back
    # inside a function) must be reported.
    edges = {"datasets": {"folder"}, "folder": set()}
    assert _cycle_through("datasets", edges) is None
    edges["folder"] = {"datasets"}  # the function-level edge
    assert _cycle_through("datasets", edges) == ["datasets", "folder", "datasets"]


def test_library_never_imports_the_application():
    offences = [
        f"{module} imports {target}" + (" (inside a function)" if target not in top else "")
        for module, (top, inner) in sorted(GRAPH.items())
        if module not in APPLICATION
        for target in sorted((top | inner) & APPLICATION)
    ]
    assert not offences, "Library modules must not import the application layer: " + "; ".join(
        offences
    )


def test_core_modules_import_no_optional_library_at_module_level():
    # Everything `import keras_gmix` loads, followed through module-level imports.
    loaded, todo = set(), ["keras_gmix"]
    while todo:
        module = todo.pop()
        if module not in loaded:
            loaded.add(module)
            todo.extend(GRAPH[module][0])
    assert not loaded & APPLICATION
    offences = {
        module: sorted(_external_top_level_imports(module) & set(OPTIONAL_LIBRARIES))
        for module in sorted(loaded)
    }
    offences = {module: names for module, names in offences.items() if names}
    assert not offences, f"Import these inside the functions that use them: {offences}"


def _run(code):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_keras_gmix_loads_no_optional_library():
    # Keras 3.15 itself imports matplotlib and scikit-learn when they are
    # installed (keras/src/visualization, keras/src/wrappers): what Keras
    # and TensorFlow load is the baseline, keras_gmix must add none of them.
    loaded = _run(
        f"""
import json, sys
optional = {OPTIONAL_LIBRARIES!r}
import keras, tensorflow
baseline = [m for m in optional if m in sys.modules]
import keras_gmix
assert keras_gmix.__file__.startswith({PACKAGE_DIR!r}), keras_gmix.__file__
print(json.dumps(dict(
    baseline=baseline,
    after=[m for m in optional if m in sys.modules],
    package=sorted(m for m in sys.modules if m.startswith("keras_gmix")),
)))
"""
    )
    assert set(loaded["after"]) <= set(loaded["baseline"]), loaded
    assert "tensorflow_datasets" not in loaded["after"] and "yaml" not in loaded["after"]
    assert not set(loaded["package"]) & APPLICATION, loaded["package"]
    assert "keras_gmix.data" not in loaded["package"]  # loaded on first use


def test_import_keras_gmix_works_without_the_optional_libraries():
    # With the four made unimportable (None in sys.modules), Keras falls back
    # (it guards its own imports); keras_gmix must import, build and train a
    # step without them, and nothing must have loaded them.
    loaded = _run(
        f"""
import json, sys
for name in {OPTIONAL_LIBRARIES!r}:
    sys.modules[name] = None
import numpy as np, keras
import keras_gmix as kg
inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
model = kg.GMixModel(inner, method="gmix", seed=0)
model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
model.fit(np.zeros((8, 4), "float32"), np.eye(3)[np.arange(8) % 3], epochs=1, verbose=0)
kg.callbacks.FlatnessMonitor, kg.checkpoint.BackupAndRestore, kg.schedules.LinearWarmup
kg.models.build_model, kg.data.load_dataset
print(json.dumps([m for m in {OPTIONAL_LIBRARIES!r} if sys.modules.get(m) is not None]))
"""
    )
    assert loaded == []


def test_every_public_name_is_exported_explicitly():
    tree = ast.parse(open(os.path.join(PACKAGE_DIR, "__init__.py"), encoding="utf-8").read())
    imported = {
        (alias.asname or alias.name).split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    } - {"importlib"}
    lazy = set(keras_gmix._LAZY_SUBMODULES)
    assert imported | lazy == set(keras_gmix.__all__)
    for name in keras_gmix.__all__:
        assert getattr(keras_gmix, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        keras_gmix.__getattr__("train")  # the application is imported by name only


def test_saved_model_with_warmup_loads_after_import_keras_gmix_alone(tmp_path):
    # LinearWarmup lives in the library (schedules.py) and `import keras_gmix`
    # registers it: loading needs no import of the training application. A
    # model saved before the move names the module `keras_gmix.train`; the
    # registered name is what Keras looks up, so it loads as well.
    import keras
    import numpy as np

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = keras_gmix.GMixModel(inner, method="erm", seed=0)
    from keras_gmix.schedules import LinearWarmup

    schedule = LinearWarmup(0.1, 5, 0.1)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="categorical_crossentropy")
    model.fit(np.zeros((8, 4), "float32"), np.eye(3)[np.arange(8) % 3], epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = _run(
        f"""
import json, sys, keras
import keras_gmix
model = keras.saving.load_model({str(path)!r})
rate = model.optimizer.get_config()["learning_rate"]
print(json.dumps(dict(schedule=rate["class_name"], module=rate["module"],
                      train_loaded="keras_gmix.train" in sys.modules)))
"""
    )
    assert loaded == dict(
        schedule="LinearWarmup", module="keras_gmix.schedules", train_loaded=False
    )
