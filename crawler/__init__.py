"""Registry schema and everything that fills it: Civitai and Hugging Face crawls, family and inpainting detection."""
