"""Compile the CPU selective scan now (it is otherwise compiled on first use).

    python -m mmshufflemamba.ops.build [--verbose]

``tools/install.sh`` runs this. Exits non-zero, after the warning that says why, when the
kernel cannot be built: only this command-line entry exits; :func:`main` returns the code.
"""
import sys

from mmshufflemamba.ops.cpu_kernel import load_cpu_kernel


def main(argv=None) -> int:
    """Build (or find in the cache) the kernel; 0 when it is ready, 1 when it cannot be."""
    argv = sys.argv[1:] if argv is None else argv
    module = load_cpu_kernel(verbose='--verbose' in argv)
    if module is None:
        print('the compiled CPU selective scan is not available (see the warning above); '
              'the PyTorch scan will be used.', file=sys.stderr)
        return 1
    print(f'compiled CPU selective scan ready: {module.__file__}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
