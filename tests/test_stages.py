"""sdeseg_jax.stages: the registry and the rule that stages hand over only through artifacts;
and the repository's line length."""

import ast
import os
import subprocess

from sdeseg_jax import stages

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'sdeseg_jax')
ENTRY_MODULES = {'sdeseg_jax.main', 'sdeseg_jax.select', 'sdeseg_jax.predict'}


def _stage_of(module: str) -> str | None:
  """'sdeseg_jax.stages.select_labels.schedule' -> 'select_labels'; None outside the stages."""
  parts = module.split('.')
  return parts[2] if parts[:2] == ['sdeseg_jax', 'stages'] and len(parts) > 2 else None


def _stage_sources():
  """(module name, source path) of every stage module and of the modules of stage packages."""
  folder = os.path.join(PACKAGE, 'stages')
  for root, _, files in os.walk(folder):
    for name in sorted(files):
      if not name.endswith('.py'):
        continue
      path = os.path.join(root, name)
      module = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, '.')
      module = module.removesuffix('.__init__')
      if module not in ('sdeseg_jax.stages', 'sdeseg_jax.stages.base'):
        yield module, path


def _imports(path: str, module: str) -> set[str]:
  """What `path` imports, at any depth (function-level imports included): `import a.b` gives a.b,
  `from a import b` gives a.b (b may be a module or a name in a)."""
  found = set()
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                        ([base] if base else []))
      found.update(f'{base}.{alias.name}' for alias in node.names)
  return found


def test_no_stage_imports_another_stage_or_an_entry_module():
  offenders = []
  for module, path in _stage_sources():
    own = _stage_of(module)
    for imported in _imports(path, module):
      other = _stage_of(imported)
      if (imported in ENTRY_MODULES or imported == 'sdeseg_jax.stages' or
          (other is not None and other not in (own, 'base'))):
        offenders.append(f'{module} imports {imported}')
  assert not offenders, offenders


def test_the_rule_check_sees_an_offending_import(tmp_path):
  """The check above would fail on each kind of forbidden import."""
  cases = {'from sdeseg_jax.stages import segment': 'sdeseg_jax.stages.segment',
           'from sdeseg_jax import stages': 'sdeseg_jax.stages',
           'from .. import depth_labels': 'sdeseg_jax.stages.depth_labels',
           'import sdeseg_jax.predict': 'sdeseg_jax.predict'}
  for line, expected in cases.items():
    path = tmp_path / 'schedule.py'
    path.write_text(f'def f():\n  {line}\n')
    assert expected in _imports(str(path), 'sdeseg_jax.stages.select_labels.schedule'), line


def test_the_registry_lists_every_stage_module_in_method_order():
  assert list(stages.STAGES) == ['data', 'sde_pretrain', 'sde_source', 'depth_labels',
                                 'select_labels', 'segment', 'evaluate']
  modules = {module.split('.')[2] for module, _ in _stage_sources()}
  registered = {stage.run.__module__.split('.')[2] for stage in stages.STAGES.values()}
  assert registered == modules
  for stage in stages.STAGES.values():
    assert callable(stage.run)


def test_no_source_line_is_longer_than_100_characters():
  root = os.path.dirname(PACKAGE)
  files = subprocess.run(['git', 'ls-files', '*.py'], cwd=root, capture_output=True, text=True,
                         check=True).stdout.split()
  long = [f'{name}:{number}' for name in files
          for number, line in enumerate(open(os.path.join(root, name), encoding='utf-8'), 1)
          if len(line.rstrip('\n')) > 100]
  assert files and not long, long
