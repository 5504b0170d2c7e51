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


PACKAGE = OPS.parent


def package_import_graph():
    """Module -> the package modules it imports (module level or in a function), each
    import also counting the packages above its target, which Python runs first; a
    module's own ancestors are left out (a package importing its parts is the norm)."""
    names = {}
    for path in PACKAGE.rglob('*.py'):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        names['.'.join(parts)] = path
    graph = {}
    for name, path in names.items():
        package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    up = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(up + ([base] if base else []))
                found = [f'{base}.{a.name}' if f'{base}.{a.name}' in names else base
                         for a in node.names]
            else:
                continue
            for target in found:
                pieces = target.split('.')
                targets |= {'.'.join(pieces[:i]) for i in range(1, len(pieces) + 1)}
        graph[name] = {t for t in targets if t in names and t != name
                       and not name.startswith(t + '.')}
    return graph


def test_package_has_no_import_cycles():
    graph = package_import_graph()
    assert 'mmshufflemamba.ops.selective_scan' in graph['mmshufflemamba.ops']
    done, active = set(), []

    def visit(name):
        assert name not in active, 'import cycle: ' + ' -> '.join(
            active[active.index(name):] + [name])
        if name in done:
            return
        active.append(name)
        for target in sorted(graph[name]):
            visit(target)
        active.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
