"""``python -m match`` runs the command line."""

from match.cli import main

main()
