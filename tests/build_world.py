"""What build tests share: the fake Hub, signed storage and Civitai started together, and the environment
that points a build at them and at a private cache."""

import contextlib
import hashlib
from dataclasses import dataclass

from tests.civitai_fake import FakeCivitai, Server
from tests.hf_fake import FakeFile, FakeHub, HubServer
from tests.storage_fake import FakeStorage, StorageServer


class RealFile(FakeFile):
    """A Hub file whose lfs.sha256 is its content's (the fixture hub's default is a made-up one)."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class Servers:
    storage: FakeStorage
    civitai: FakeCivitai
    storage_url: str
    civitai_url: str


@contextlib.contextmanager
def build_servers(monkeypatch, tmp_path, hub: FakeHub):
    storage, fake = FakeStorage(), FakeCivitai([])
    with HubServer(hub) as hub_url, StorageServer(storage) as storage_url, Server(fake) as civitai_url:
        monkeypatch.setenv("HF_ENDPOINT", hub_url)
        monkeypatch.setenv("INPAINT_ADVISOR_CIVITAI_URL", civitai_url)
        monkeypatch.setenv("INPAINT_ADVISOR_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        yield Servers(storage, fake, storage_url, civitai_url)
