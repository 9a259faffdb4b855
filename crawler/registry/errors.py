"""What can be wrong with a registry, each with a message that says which registry and what is wrong.

Every class carries a ``code`` for ``--json``; data/error_codes.json gives its exit status: 2 for a registry
that is misconfigured or unusable as given, 1 for one that simply has nothing in it yet.
"""

from data.errors import InpaintAdvisorError


class RegistryError(InpaintAdvisorError):
    code = "registry-error"


class NoRegistry(RegistryError):
    """Nothing at the configured place yet (a read-only command never creates one)."""

    code = "no-registry"


class NotARegistry(RegistryError):
    """A file or database that is not an inpaint-advisor registry: corrupt, a directory, another program's."""

    code = "not-a-registry"


class NewerRegistry(RegistryError):
    """Made by a newer inpaint-advisor: reading or changing it could lose what that version stores."""

    code = "registry-too-new"


class RegistryUnreachable(RegistryError):
    """A server that does not answer, refuses the login, or has no such database."""

    code = "registry-unreachable"


class MissingDriver(RegistryError):
    code = "missing-driver"


class UnsupportedRegistry(RegistryError):
    """A URL scheme the registry cannot live on."""

    code = "unsupported-registry"


class ReadOnlyRegistry(RegistryError):
    """A change was needed (an upgrade, a write) but the registry cannot be written."""

    code = "registry-read-only"
