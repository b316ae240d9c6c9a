"""The code-shape figures of the model face (issue 19), for this tree or another checkout.

    python benchmarks/code_shape.py [--root DIR] [--top 5]

- reach-ins: reads of a model internal outside the core (``.runner``, ``.scheduler``,
  ``.tokenizer``, ``.settings_origin``, ``.session``, ``.artifact.manifest``, private names of the
  model classes), by the rule tests/test_architecture.py enforces (target 0);
- runner replacements: assignments to a model's ``.runner``/``.scheduler``/``.tokenizer`` outside
  the core (target 0);
- the largest functions of the front (crossrank.front, crossrank.integrations, ``__main__``), in
  lines from ``def`` to the last line, nested functions included (target: under 80).

The rules are read from this repository's tests/test_architecture.py and applied to ``--root``
(e.g. an older checkout: ``git worktree add /tmp/before f5b4fd0``), so both trees are measured alike.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _rules():
    spec = importlib.util.spec_from_file_location("architecture_rules", HERE / "tests" / "test_architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def front_functions(root: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function in the front, largest first."""
    engine = root / "engine"
    files = [p for p in engine.rglob("*.py") if p.relative_to(engine).parts[0] in ("front", "integrations")
             or p.name == "__main__.py"]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def runner_replacements(root: Path, rules) -> list[str]:
    found = []
    for path in rules.outside_core_files(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in ("runner", "scheduler", "tokenizer") \
                        and not (isinstance(target.value, ast.Name) and target.value.id == "self"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(HERE), help="the checkout to measure (default: this one)")
    parser.add_argument("--top", type=int, default=5, help="largest front functions to list (default 5)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    rules = _rules()
    reach = rules.model_reach_ins(root)
    lines = {entry.rsplit(":", 1)[0] for entry in reach}
    print(f"reach-ins: {len(reach)} reads on {len(lines)} lines in {len({e.split(':')[0] for e in reach})} files")
    for entry in reach:
        print(f"  {entry}")
    replaced = runner_replacements(root, rules)
    print(f"runner replacements: {len(replaced)} {replaced}")
    print("largest front functions (lines):")
    for size, where in front_functions(root)[: args.top]:
        print(f"  {size:4d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
