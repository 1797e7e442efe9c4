"""`python -m scpo_spec.cli`: the `scpo` command, as the console script runs it."""

from scpo_spec.cli import main

main()
