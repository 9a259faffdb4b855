"""Civitai's own numbers inside registry ids: "civitai:v128713" is version 128713, "civitai:f120000" file 120000."""


def version_number(version_id: str) -> str:
    return version_id.split(":v", 1)[1]


def file_number(file_id: str | None) -> str | None:
    """None for an id that is not a Civitai file's."""
    return file_id.split(":f", 1)[1] if file_id and file_id.startswith("civitai:f") else None
