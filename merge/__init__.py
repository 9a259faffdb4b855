"""Build inpainting checkpoints: streaming checkpoint I/O, layout detection from tensor shapes, add-difference."""
