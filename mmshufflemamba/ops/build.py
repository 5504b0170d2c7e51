"""Compile the CPU selective scan now (it is otherwise compiled on first use).

    python -m mmshufflemamba.ops.build [--verbose]

``tools/install.sh`` runs this. Exits non-zero, after the warning that says why, when the
kernel cannot be built.
"""
import sys

from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel


def main() -> None:
    module = load_cpu_kernel(verbose='--verbose' in sys.argv)
    if module is None:
        raise SystemExit('the compiled CPU selective scan is not available (see the warning '
                         'above); the PyTorch scan will be used.')
    print(f'compiled CPU selective scan ready: {module.__file__}')


if __name__ == '__main__':
    main()
