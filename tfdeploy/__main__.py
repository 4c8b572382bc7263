"""``python -m tfdeploy`` = the ``tfdeploy`` command."""

from tfdeploy.cli import main

main()
