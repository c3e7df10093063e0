"""The package as a newcomer meets it: licence, metadata, the `ssljax` command, the top-level API."""

import os

import pytest

tomllib = pytest.importorskip('tomllib')  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)['project']


def test_license_is_apache_and_metadata_complete():
    text = open(os.path.join(ROOT, 'LICENSE')).read()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text and 'END OF TERMS AND CONDITIONS' in text
    project = _pyproject()
    assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']
    assert project['authors'] == [{'name': 'ssljax developers'}]
    assert project['urls']['Homepage'] == 'https://github.com/ssljax/ssljax'
    assert project['requires-python'].startswith('>=3.')
    assert not any(c.startswith('License ::') for c in project['classifiers'])  # PEP 639: the SPDX string alone
    assert any(c.startswith('Programming Language :: Python :: 3.') for c in project['classifiers'])
    assert os.path.exists(os.path.join(ROOT, 'CHANGELOG.md'))
