"""``python -m gradtap.cli``: the same as the ``gradtap`` console script."""

from gradtap.cli.main import cli

cli(prog_name="gradtap")
