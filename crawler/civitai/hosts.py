"""Civitai's hosts. One site answers under several names (civitai/civitai's docs/multi-host-domain-aliases.md,
domain.md section 1): civitai.com (alias civitai.blue), civitai.red and civitai.green; in its code only .green
is SFW-only, and the API filters by its ``nsfw`` parameter, not by host. URLs of every host are read; the one
asked and linked is a setting (``data.settings.CIVITAI`` by default)."""

CIVITAI_HOSTS = ("civitai.com", "civitai.blue", "civitai.red", "civitai.green")
