"""Answer "which inpainting checkpoint do I use with this model?": resolve, recommend, render, and the CLI."""
