"""``python -m headwater``: the same as the ``headwater`` command."""

from headwater.cli import main

main(prog_name="headwater")
