"""Superseded by ``python -m ssljax.reproduce`` (same options); kept so that older commands still work.

    python experiments/run_table.py --methods 'directpred byol' --out OUT [--config.KEY=VALUE ...]

is ``python -m ssljax.reproduce --methods 'directpred byol' --out OUT ...``; the old ``--rebuild`` is ``--table-only``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssljax import reproduce  # noqa: E402

if __name__ == '__main__':
    sys.exit(reproduce.run(['--table-only' if a == '--rebuild' else a for a in sys.argv[1:]]))
