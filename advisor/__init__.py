"""Answer "which inpainting checkpoint do I use with this model?", and build it: one package per use case
(advice, build, get, local, team) and the command line (cli)."""
