"""``python -m vmm.cli``: the same command line as the ``vmm`` script."""
from . import main

main()
