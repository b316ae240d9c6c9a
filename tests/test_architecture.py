"""The architecture, read from the code's own imports (ast: nothing is imported to check it).

Layers, each importing only from those below it:

    core        modules directly in engine/ (import name crossrank.*): the runtime a service imports
    evaluation  crossrank.evaluation: data sets, metrics, retrieval evaluation (export and front use it)
    kernels     crossrank.kernels: graph pieces and int8 recipes (the export uses them)
    export      crossrank.export: HF checkpoint -> artifact (torch, transformers, optimum)
    stores      crossrank.stores: first stages behind extras (pgvector, Milvus, BM25); the core only
    front       everything else: crossrank.front (CLI, demo, bench, tune), framework adapters, servers

Plus: no import cycle anywhere (module-level or inside functions), exactly one place that builds an
ONNX Runtime session, and ``import crossrank`` loading core modules only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"crossrank": ROOT / "engine", "crossrank.export": ROOT / "export",
                "crossrank.kernels": ROOT / "kernels"}
CORE_THIRD_PARTY = {"numpy", "onnxruntime", "tokenizers", "usearch", "tqdm", "openvino"}
# Backends the core imports only when a model asks for them (not at ``import crossrank``, not for
# a model on another backend: tests/test_backends.py checks the latter).
LAZY_BACKENDS = {"openvino"}
NEVER_IN_RUNTIME = {"torch", "transformers", "optimum", "onnx", "sentence_transformers", "ray", "pyarrow"}
STORE_CLIENTS = {"psycopg", "pgvector", "pymilvus", "bm25s"}  # behind extras: never loaded by `import crossrank`
ALLOWED_LAYERS = {
    "core": {"core"},
    "evaluation": {"core", "evaluation"},
    "kernels": {"core", "kernels"},
    "export": {"core", "evaluation", "kernels", "export"},
    "stores": {"core", "stores"},
    "front": {"core", "evaluation", "kernels", "export", "stores", "front"},
}


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "crossrank" and parts and parts[0] in ("export", "kernels"):
                continue  # not a folder of engine/ in practice; guard against shadowing
            modules[name] = path
    return modules


MODULES = module_files()


def layer(module: str) -> str:
    if module.startswith("crossrank.export"):
        return "export"
    if module.startswith("crossrank.kernels"):
        return "kernels"
    if module.startswith("crossrank.evaluation"):
        return "evaluation"
    if module.startswith("crossrank.stores"):
        return "stores"
    path = MODULES[module]
    if path.parent == PACKAGE_DIRS["crossrank"] and path.name != "__main__.py":
        return "core"
    return "front"


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the module, inside functions too; relative
    imports resolved; ``from pkg import name`` resolved to the submodule when ``name`` is one."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


def crossrank_target(name: str) -> str | None:
    """The crossrank module an import names (the longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def test_every_module_imports_only_from_its_own_layer_or_below():
    problems = []
    for module in MODULES:
        own = layer(module)
        for name, line in imports_of(module):
            where = f"{MODULES[module].relative_to(ROOT)}:{line}"
            target = crossrank_target(name) if name.startswith("crossrank") else None
            if target is not None:
                if layer(target) not in ALLOWED_LAYERS[own]:
                    problems.append(f"{where}: {own} module {module} imports {layer(target)} module {target}")
                continue
            top = name.split(".")[0]
            if own in ("core", "evaluation", "stores") and top in NEVER_IN_RUNTIME:
                problems.append(f"{where}: {own} module {module} imports {top}")
            elif own == "core" and top not in CORE_THIRD_PARTY and top not in sys.stdlib_module_names \
                    and top != "__future__":
                problems.append(f"{where}: core module {module} imports {top} (the runtime depends only on "
                                f"{sorted(CORE_THIRD_PARTY)})")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    graph = {m: sorted({t for name, _ in imports_of(m) if name.startswith("crossrank")
                        for t in [crossrank_target(name)] if t and t != m}) for m in MODULES}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_one_session_builder():
    """``InferenceSession(`` appears only in crossrank.session, an OpenVINO ``compile_model(`` only in
    the OpenVINO session it builds and the peer harness (the package, tests and benchmarks' own code)."""
    # front/peers.py compiles a peer's graph (sentence-transformers' own ONNX export): not a crossrank model.
    allowed = {"InferenceSession(": {ROOT / "engine" / "session.py"},
               "compile_model(": {ROOT / "engine" / "openvino_session.py", ROOT / "engine" / "front" / "peers.py"}}
    found = [f"{path.relative_to(ROOT)}:{number}: {call}"
             for folder in ("engine", "export", "kernels", "tests")
             for path in (ROOT / folder).rglob("*.py") if path != Path(__file__)
             for number, line in enumerate(path.read_text().splitlines(), 1)
             for call, homes in allowed.items() if call in line and path not in homes]
    # benchmarks/openvino_ep_probe.py runs in a venv without crossrank (onnxruntime-openvino replaces
    # the onnxruntime module), to compare onnxruntime's OpenVINO EP with the openvino runtime.
    probe = ROOT / "benchmarks" / "openvino_ep_probe.py"
    found += [f"{path.relative_to(ROOT)}:{number}" for path in (ROOT / "benchmarks").rglob("*.py") if path != probe
              for number, line in enumerate(path.read_text().splitlines(), 1) if "InferenceSession(" in line]
    assert not found, f"sessions built outside crossrank.session.build_session: {found}"


def test_layers_are_classified_as_documented():
    assert layer("crossrank.reranker") == "core" and layer("crossrank.errors") == "core"
    assert layer("crossrank.front.cli") == "front" and layer("crossrank.__main__") == "front"
    assert layer("crossrank.front.ray.serve") == "front" and layer("crossrank.front.ray.data") == "front"
    assert layer("crossrank.evaluation.metrics") == "evaluation"
    assert layer("crossrank.stores.pgvector") == "stores" and layer("crossrank.stores") == "stores"
    assert layer("crossrank.export.starter") == "export"
    # the import reader resolves what the modules really import
    assert "crossrank.front.tune" in {name for name, _ in imports_of("crossrank.front.cli")}
    assert "crossrank.export.source" in {name for name, _ in imports_of("crossrank.export")}  # relative import


def test_import_crossrank_loads_only_core_modules():
    code = ("import sys, crossrank, json; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'crossrank' or m.startswith('crossrank.')))); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(NEVER_IN_RUNTIME | STORE_CLIENTS | LAZY_BACKENDS)!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    loaded, heavy = (json.loads(line) for line in result.stdout.splitlines())
    assert not heavy, f"import crossrank loaded {heavy}"
    assert loaded and all(layer(m) == "core" for m in loaded), [m for m in loaded if layer(m) != "core"]


# -- the models' public face: what the rest of the house may read of a model ----------------------
# A model's session, executor, tokenizer and manifest dict are the core's business: outside the core,
# code uses the public face (crossrank.model.Model: options, describe(), token_lengths(), stats(),
# results that carry their token counts). Read from the AST, so no front module is imported.

MODEL_INTERNALS = {"runner", "scheduler", "tokenizer", "settings_origin", "session"}
MODEL_MODULES = ("model.py", "reranker.py", "embedder.py", "runner.py", "scheduler.py", "tokenize.py")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def private_model_names(root: Path = ROOT) -> set[str]:
    """Methods and ``self.`` attributes with a private name (``_x``) in the core's model classes."""
    names = set()
    for file_name in MODEL_MODULES:
        path = root / "engine" / file_name
        if not path.is_file():
            continue
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id == "self" and _private(node.attr):
                    names.add(node.attr)
    return names


def outside_core_files(root: Path = ROOT) -> list[Path]:
    """Every module of crossrank that is not core (front, integrations, evaluation) and the benchmarks."""
    engine = root / "engine"
    return sorted([p for p in engine.rglob("*.py") if p.parent != engine or p.name == "__main__.py"]
                  + list((root / "benchmarks").glob("*.py")))


def model_reach_ins(root: Path = ROOT) -> list[str]:
    """``path:line: .attr`` for each read of a model internal outside the core: ``.runner``,
    ``.scheduler``, ``.tokenizer``, ``.settings_origin``, ``.session``, ``.artifact.manifest`` or a
    private name of the model classes (on anything but ``self``/``cls``)."""
    private = private_model_names(root)
    found = set()
    for path in outside_core_files(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or (isinstance(node.value, ast.Name)
                                                       and node.value.id in ("self", "cls")):
                continue
            manifest = node.attr == "manifest" and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "artifact"
            if node.attr in MODEL_INTERNALS or node.attr in private or manifest:
                found.add(f"{path.relative_to(root)}:{node.lineno}: .{'artifact.' if manifest else ''}{node.attr}")
    return sorted(found)


def test_nothing_outside_the_core_reads_a_model_internal():
    found = model_reach_ins()
    assert not found, "use the model's public face (crossrank.model.Model) instead:\n" + "\n".join(found)


def test_the_reach_in_rule_sees_a_reach_in(tmp_path):
    (tmp_path / "engine" / "front").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "engine" / "reranker.py").write_text("class Reranker:\n    def _scores(self):\n        self._cache = 1\n")
    (tmp_path / "engine" / "front" / "x.py").write_text(
        "def f(model, self):\n    model.runner.stats = 0\n    self.tokenizer = 1\n    return model._cache\n")
    (tmp_path / "benchmarks" / "b.py").write_text("print(model.artifact.manifest['kind'], args.artifact)\n")
    assert model_reach_ins(tmp_path) == ["benchmarks/b.py:1: .artifact.manifest", "engine/front/x.py:2: .runner",
                                         "engine/front/x.py:4: ._cache"]
