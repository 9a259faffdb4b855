"""Civitai's hosts. Since the April 2026 split civitai.com shows SFW content only and civitai.red everything,
with the same API, keys and ids on both (domain.md section 1): the crawler and live lookups ask civitai.red
(``data.settings.CIVITAI``), so that no checkpoint is missed, and both hosts' URLs are read."""

CIVITAI_HOSTS = ("civitai.com", "civitai.red")
