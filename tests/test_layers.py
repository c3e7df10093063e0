"""The package's layering, checked as the build checks it: import-linter's contracts (pyproject.toml) hold, they
fail on an upward import, and no module of ssljax/ takes part in an import cycle (function-level imports included)."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'ssljax')


def module_imports(root: str) -> dict[str, set[str]]:
    """{module: the ssljax modules it imports anywhere in its file}, resolved to modules that exist."""
    modules = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(root)).replace(os.sep, '.')
                modules[dotted.removesuffix('.__init__')] = path

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition('.')[0]
        return name

    graph = {}
    for module, path in modules.items():
        package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')
                    base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule sub; `from pkg.mod import name`, the module pkg.mod
                targets |= {f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names}
        graph[module] = {resolve(t) for t in targets if t.startswith('ssljax')} - {'', module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_the_package_is_in_an_import_cycle():
    graph = module_imports(PACKAGE)
    assert len(graph) > 50
    assert cycles(graph) == []
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]  # the check itself


def _lint_imports(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    exe = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
    return subprocess.run([exe, '--config', os.path.join(root, 'pyproject.toml'), '--no-cache'], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope='module')
def lint_imports_available():
    if shutil.which('lint-imports', path=os.path.dirname(sys.executable)) is None:
        pytest.skip('import-linter is not installed (pip install -r requirements.txt)')


def test_import_linter_contracts_hold_and_fail_on_an_upward_import(tmp_path, lint_imports_available):
    ok = _lint_imports(REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert 'broken' in ok.stdout and '0 broken' in ok.stdout
    # The same tree with one low-level module importing the train loop: the layers contract must break.
    shutil.copytree(PACKAGE, tmp_path / 'ssljax', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(os.path.join(REPO, 'pyproject.toml'), tmp_path / 'pyproject.toml')
    with open(tmp_path / 'ssljax' / 'models' / 'heads.py', 'a') as f:
        f.write('\n\ndef _upward():\n    from ssljax import train  # noqa: F401\n')
    broken = _lint_imports(str(tmp_path))
    assert broken.returncode != 0
    assert 'ssljax.models.heads -> ssljax.train' in broken.stdout
