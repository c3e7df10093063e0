"""The README and the docs site: the README's test command is .ci/run's, every repository path they name exists,
the generated reference pages are current, and every Python example runs as written (at tiny sizes)."""

import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md', *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '**', '*.md'),
                                                                          recursive=True))]
OUTSIDE = '../shared/'  # paths outside the repository: each mention must say so
TOP = ('ssljax/', 'configs/', 'experiments/', 'tests/', 'docs/', '.ci/')
FILES = ('.py', '.md', '.toml', '.txt', '.ipynb', '.json', '.png', '.yml')
NOT_PATHS = ('workdirs/', 'W/', 'DIR/', 'PATH/', 'ROOT/', 'TFDS_DATA_DIR', 'http')


def _read(rel):
    with open(os.path.join(REPO, rel)) as f:
        return f.read()


def test_readme_test_command_is_the_first_line_ci_runs():
    ci = [line for line in _read('.ci/run').splitlines() if line and not line.startswith(('#', 'set ', 'cd '))]
    assert ci[0] in _read('README.md').splitlines()[0:200] or f'    {ci[0]}' in _read('README.md').splitlines()
    assert any('mkdocs build --strict' in line for line in ci)


def _named_paths(rel, text):
    """(path as written, resolved path) for every repository path a page names: Markdown links and `code` spans
    that look like files or folders of the repository."""
    base = os.path.dirname(os.path.join(REPO, rel))
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        target = target.split('#')[0]
        if target and not target.startswith(('http:', 'https:', 'mailto:')):
            yield target, os.path.normpath(os.path.join(base, target))
    for span in re.findall(r'`([^`\s]+)`', text):
        span = span.rstrip('.,:;')
        if any(c in span for c in '<>*{}=$[]|') or span.startswith(NOT_PATHS) or span.startswith(OUTSIDE):
            continue
        if '/' in span and any(part.split('.')[0].isupper() for part in span.split('/')[1:]):
            continue  # a placeholder: configs/NAME.py, experiments/X
        if span.startswith(TOP) or ('/' not in span and span.endswith(FILES) and span[0].isupper()):
            yield span, os.path.join(REPO, span)


@pytest.mark.parametrize('rel', PAGES)
def test_every_repository_path_a_page_names_exists(rel):
    text = _read(rel)
    missing = sorted({written for written, path in _named_paths(rel, text) if not os.path.exists(path)})
    assert not missing, f'{rel} names paths the repository does not have: {missing}'
    for line in text.splitlines():
        if OUTSIDE in line:
            assert 'outside the repository' in line, f'{rel}: an outside path not marked as such: {line.strip()}'


def test_the_path_check_sees_paths():
    found = dict(_named_paths('docs/quickstart.md', 'see `BENCHMARKS.md`, `configs/simclr.py`, [x](methods.md)'))
    assert set(found) == {'BENCHMARKS.md', 'configs/simclr.py', 'methods.md'}
    assert not dict(_named_paths('README.md', '`configs/nope.py`'))['configs/nope.py'].endswith('simclr.py')
    assert not os.path.exists(dict(_named_paths('README.md', '`configs/nope.py`'))['configs/nope.py'])


def test_generated_reference_pages_are_current():
    r = subprocess.run([sys.executable, os.path.join(REPO, 'docs', 'gen_reference.py'), '--check'],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


# The examples at tiny sizes: ssljax.load_config appends these overrides (8x8 digits, a tiny ResNet, 2 steps), so
# each block runs as written in seconds.
TINY = '''
import ssljax
_load = ssljax.load_config
def _tiny(spec, overrides=()):
    steps = [o for o in overrides if o.startswith('total_steps=')]
    config = _load(spec, [*overrides, 'dataset=digits', 'model.backbone=resnet_tiny', 'image_size=8',
                          'augment.size=8', 'augment.blur_prob=0.0', 'batch_size=16', 'log_every=1',
                          'eval.max_train_examples=128', 'eval.random_init_baseline=false',
                          *(['total_steps=2'] if steps else [])])
    for name in config.evals:
        if 'epochs' in config.evals[name]:
            config.evals[name].epochs = 1
    return config
ssljax.load_config = _tiny
'''


def _python_blocks(rel):
    return re.findall(r'```python\n(.*?)```', _read(rel), flags=re.S)


# The README's examples run by default; the docs pages' (a tiny training run each) in the slow step.
EXAMPLES = [pytest.param(rel, i, marks=() if rel == 'README.md' else pytest.mark.slow, id=f'{rel}-{i}')
            for rel in PAGES for i, _ in enumerate(_python_blocks(rel))]


def test_the_readme_and_the_api_page_have_examples():
    assert {'README.md', 'docs/quickstart.md', 'docs/configs.md', 'docs/api.md', 'docs/export.md'} <= \
        {p.values[0] for p in EXAMPLES}


@pytest.mark.parametrize('rel, index', EXAMPLES)
def test_python_examples_run_as_written(rel, index, tmp_path):
    code = _python_blocks(rel)[index]
    script = tmp_path / 'example.py'
    script.write_text(TINY + code)
    env = dict(os.environ, PYTHONPATH=REPO)  # with the session's JAX compilation cache (conftest.py)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, f'{rel} example {index} failed:\n{code}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
