"""``python -m eqco``: the ``eqco`` command."""
from ._cli import main

main()
