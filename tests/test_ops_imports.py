"""mmshufflemamba.ops imports in one direction: the scan contract is a leaf, every backend
imports only the contract (and the kernel loader), the dispatcher imports the backends, and
no function goes back up the chain with an import of its own."""
import ast
from pathlib import Path

OPS = Path(__file__).resolve().parents[1] / 'mmshufflemamba' / 'ops'


def ops_imports(path: Path):
    """(module imported, whether at module level) for each import of another ops module."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (
                node.module or '').startswith('mmshufflemamba.ops')):
            module = (node.module or '').replace('mmshufflemamba.ops', '').lstrip('.')
            names = [module] if module else [alias.name for alias in node.names]
            found += [(name.split('.')[0], id(node) in top) for name in names]
    return found


def test_ops_modules_import_without_cycles_and_the_contract_is_a_leaf():
    graph = {path.stem: ops_imports(path) for path in OPS.glob('*.py')}
    assert graph['scan_contract'] == []
    late = {(name, target) for name, edges in graph.items() for target, top in edges
            if not top}
    # the Triton kernels are decorated on first use, for the interpreter mode of that moment
    assert late == {('triton_scan', 'triton_scan_kernels')}, late
    edges = {name: {target for target, _ in targets} - {name} for name, targets in graph.items()}
    done, active = set(), []

    def visit(name):
        assert name not in active, ' -> '.join(active + [name])
        if name in done:
            return
        active.append(name)
        for target in edges.get(name, ()):
            visit(target)
        active.pop()
        done.add(name)

    for name in sorted(edges):
        if name != '__init__':
            visit(name)
