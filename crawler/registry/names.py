"""The one normal form of model names, shared by indexing and matching."""

import re
import unicodedata


def normalize_name(name: str) -> str:
    """Lower-case, accents folded, punctuation to spaces; non-Latin letters are kept as they are."""
    folded = unicodedata.normalize("NFKD", name)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
    return re.sub(r"[\W_]+", " ", folded).strip()
