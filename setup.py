"""Install mmshufflemamba: ``pip install -e .`` (see tools/install.sh for the full stack)."""
import os.path as osp

from setuptools import find_packages, setup


def read_requirements(name: str) -> list:
    """Requirement lines of ``requirements/<name>.txt`` without comments; ``-r other.txt``
    lines are followed."""
    path = osp.join(osp.dirname(__file__), 'requirements', f'{name}.txt')
    requirements = []
    with open(path) as f:
        for line in (line.split('#')[0].strip() for line in f):
            if line.startswith('-r'):
                requirements += read_requirements(line[2:].strip()[:-len('.txt')])
            elif line and not line.startswith('-'):
                requirements.append(line)
    return requirements


def read_version() -> str:
    path = osp.join(osp.dirname(__file__), 'mmshufflemamba', 'version.py')
    scope: dict = {}
    with open(path) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmshufflemamba',
    version=read_version(),
    description='Plain Vision Mamba backbones with stochastic layer-wise shuffle '
    'for OpenMMLab (mmpretrain, mmsegmentation, mmdetection)',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmshufflemamba', 'mmshufflemamba.*']),
    # The CPU kernels' sources and headers; they are compiled on first use (or by
    # tools/install.sh via `python -m mmshufflemamba.ops.build`), against whatever torch is
    # installed.
    package_data={'mmshufflemamba.ops': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.9',
    # torch is deliberately not listed: an install must never replace the user's torch.
    install_requires=read_requirements('runtime'),
    extras_require={
        'mm': read_requirements('mminstall'),
        'tests': read_requirements('tests'),
        'cuda': read_requirements('cuda'),
        'export': read_requirements('export'),
    },
    license='Apache-2.0',
    zip_safe=False,
)
