"""The `medpipe` command (cli.main:main); it calls pipeline/ and flows/ and holds no logic of its own."""
