"""``python -m lensengine.engine`` runs the command line."""

from lensengine.engine.cli import main

main()
