"""`python -m cli ...` is `medpipe ...`."""

from cli.main import main

main()
