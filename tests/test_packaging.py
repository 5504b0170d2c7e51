"""What a non-editable install ships: the kernels' sources, headers included (the kernels
are compiled on first use from the installed files)."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_ships_every_kernel_source(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '-q', '-w', str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob('mmshufflemamba-*.whl')
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if '/csrc/' in name}
    csrc = ROOT / 'mmshufflemamba' / 'ops' / 'csrc'
    expected = {f'mmshufflemamba/ops/csrc/{path.name}' for path in csrc.iterdir()
                if path.suffix in ('.cpp', '.h')}
    assert len(expected) >= 7 and shipped == expected
