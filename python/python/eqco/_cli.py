"""The ``eqco`` command of the Python package: the same command line as the
binary, run by the Rust library inside this interpreter."""
import os
import sys

from . import _eqco


def main() -> None:
    """Runs ``eqco`` on ``sys.argv`` and exits with its code."""
    # Workers of --nproc-per-node are started as `python -m eqco`.
    os.environ["EQCO_PYTHON_MODULE"] = sys.executable
    sys.exit(_eqco.main(["eqco", *sys.argv[1:]]))
