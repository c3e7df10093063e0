"""The `ssljax` command: dispatch, --version, configs, keys, config names, the error contract, smoke runs, output."""

import json
import os
import subprocess
import sys

import pytest

from ssljax import commands, config_lib, configure, train
from ssljax import main as main_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.dataset=digits', '--config.model.backbone=resnet_tiny', '--config.image_size=8',
        '--config.augment.size=8', '--config.augment.blur_prob=0.0', '--config.batch_size=16',
        '--config.total_steps=2', '--config.log_every=1', '--config.checkpoint_every=0']


def test_version_help_and_unknown_command(capsys):
    from ssljax import __version__
    assert commands.run(['--version']) == 0 and capsys.readouterr().out.strip() == f'ssljax {__version__}'
    assert commands.run(['--help']) == 0
    out = capsys.readouterr().out
    for name in ('train', 'evaluate', 'export', 'plot', 'reproduce', 'cka', 'bench', 'configs', 'keys'):
        assert f'\n  {name} ' in out
    assert '--config.evals=none' in out  # the one-line way to skip evaluation is in the help
    assert commands.run(['trian']) == 2 and 'did you mean train?' in capsys.readouterr().err


def test_subcommand_help_names_the_smoke_run_and_the_ssljax_prog(capsys):
    assert commands.run(['train', '--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: ssljax train') and '--config.evals=none' in out and '--smoke' in out
    assert 'methods (--config NAME): barlow_twins, byol,' in out and 'ssljax keys' in out
    assert commands.run(['cka', '--help']) == 0
    assert '--workdir-a' in capsys.readouterr().out


def test_console_script_is_declared_and_python_dash_m_works():
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
        assert tomllib.load(f)['project']['scripts'] == {'ssljax': 'ssljax.commands:main'}
    out = subprocess.run([sys.executable, '-m', 'ssljax', '--version'], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith('ssljax ')


def test_configs_lists_every_registry(capsys):
    from ssljax import evaluation
    from ssljax.data import sources
    from ssljax.models import registry
    from ssljax.objectives import OBJECTIVES
    assert commands.run(['configs', '--names-only']) == 0
    lines = {line.strip() for line in capsys.readouterr().out.splitlines()}
    for names in (OBJECTIVES, sources.DATASETS, registry.BACKBONES, evaluation.EVALUATORS, config_lib.config_names()):
        assert set(names) <= lines, set(names) - lines
    assert 'simclr' in config_lib.config_names() and 'common' not in config_lib.config_names()


def test_keys_lists_types_defaults_and_ranges(capsys):
    assert commands.run(['keys', 'simclr']) == 0
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()}
    config = config_lib.load_config('configs/simclr.py')
    assert rows['optimizer.lr'][0] == 'float' and rows['optimizer.lr'][1].startswith(f'{config.optimizer.lr!r}')
    assert 'range (0, inf)' in rows['optimizer.lr'][1]
    assert rows['keep_checkpoints'][1].endswith('range [1, inf)')
    assert rows['method'] == ['str', "'simclr'"]
    assert set(rows) == {r[0] for r in commands.config_keys(config)}
    assert commands.run(['keys', 'simclr', '--markdown', '--grep', 'objective.temperature']) == 0
    assert capsys.readouterr().out.splitlines()[2] == '| `objective.temperature` | float | `0.2` | (0, inf) |'


def test_config_names_resolve_like_paths():
    assert config_lib.resolve_config_path('simclr') == os.path.join('configs', 'simclr.py') or \
        config_lib.resolve_config_path('simclr') == os.path.join(config_lib.CONFIG_DIR, 'simclr.py')
    assert config_lib.load_config('simclr').to_dict() == config_lib.load_config('configs/simclr.py').to_dict()
    cifar = config_lib.load_config('simclr:dataset=cifar10')
    assert cifar.dataset == 'cifar10'
    assert cifar.to_dict() == config_lib.load_config('configs/simclr.py:dataset=cifar10').to_dict()
    with pytest.raises(config_lib.ConfigError, match='did you mean simclr'):
        config_lib.load_config('simclrr')
    with pytest.raises(config_lib.ConfigError, match='not found'):
        config_lib.load_config('common')


def test_config_names_resolve_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_lib.load_config('byol').method == 'byol'


@pytest.mark.parametrize('config, extra, message', [
    ('simclr', ['--config.dataset=cifar11'], "unknown dataset 'cifar11'"),
    ('simclr:dataset=cifar11', [], "unknown dataset 'cifar11'"),
    ('simclr:foo=1', [], "unknown config argument 'foo'"),
    ('simclr', ['--config.optimizer.lr=-1'], 'config key "optimizer.lr" must be > 0'),
    ('simclr', ['--config.keep_checkpoints=0'], 'config key "keep_checkpoints" must be >= 1'),
    ('simclr', ['--config.optimizer.nme=sgd'], "unknown config key 'optimizer.nme'"),
    ('simclr', ['--config.dataset=cifar10'], 'needs config key "data_dir"'),
    ('simclr', ['--config.batch_size=abc'], "expects an int"),
    ('simclrr', [], 'did you mean simclr'),
])
def test_every_config_problem_exits_2_and_creates_nothing(tmp_path, capsys, config, extra, message):
    workdir = tmp_path / 'run'
    code = commands.run(['train', '--config', config, '--workdir', str(workdir), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith('ssljax: error:') and message in err, err
    assert 'TRACEBACK' not in err
    assert not workdir.exists()


def test_evals_none_drops_every_evaluator_and_the_baseline():
    config = configure.load_config_with_overrides('simclr', ['evals=none'])
    assert dict(config.evals) == {} and config.eval.random_init_baseline is False
    configure.validate(config, 1)
    again = configure.load_config_with_overrides('simclr', ['evals=none', 'evals.knn.type=knn', 'evals.knn.k=5'])
    assert list(again.evals) == ['knn'] and again.evals.knn.k == 5
    args, overrides = main_lib.parse_args(['--config', 'simclr', '--workdir', 'W', '--smoke', '--config.seed=3'])
    assert overrides == ['total_steps=2', 'evals=none', 'seed=3']


def test_summary_text_is_short_and_names_the_file():
    summary = {'method': 'simclr', 'dataset': 'mnist', 'knn_top1': 0.8312, 'linear_top1': 0.9401,
               'random_init_knn_top1': 0.63, 'random_init_linear_top1': None, 'final_loss': 4.25, 'steps': 300,
               'wall_s': 241.3, 'eval_s': 40.2}
    text = train.summary_text(summary, '/w/summary.json')
    assert text == ('done: simclr on mnist: kNN top-1 83.1% (random init 63.0%); linear top-1 94.0%; '
                    'final loss 4.2500; 300 steps in 241 s wall (evaluation 40 s)\nsummary: /w/summary.json')
    bare = train.summary_text(dict(summary, knn_top1=None, linear_top1=None, final_loss=float('nan')), 'S')
    assert 'kNN' not in bare and 'final loss n/a' in bare


def test_a_tiny_run_prints_each_evaluator_and_a_short_summary(tmp_path, capsys):
    workdir = tmp_path / 'run'
    code = commands.run(['train', '--config', 'simclr', '--workdir', str(workdir), *TINY, '--config.evals=none',
                         '--config.evals.knn.type=knn', '--config.evals.knn.k=5'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'eval 1/1 @ step 2: knn ' in out and 'knn_top1 ' in out
    lines = out.strip().splitlines()
    assert lines[-1] == f'summary: {workdir / "summary.json"}'
    assert lines[-2].startswith('done: simclr on digits: kNN top-1 ')
    assert max(len(line) for line in lines[-2:]) < 200
    summary = json.load(open(workdir / 'summary.json'))
    assert set(k for k in summary if k.startswith('knn_')) == {'knn_top1'}
    assert not os.path.exists(workdir / 'random_init.json')
