"""The one exception tree of kplab.

    KplabError                     anything kplab reports to a person: one readable line
    ├── EnvironmentProblem         not root, a missing tool or kernel feature (says how to fix it)
    ├── LabError                   lab lifecycle: exists already, not found, locked, half-built
    ├── ManifestError              a bad manifest: names the file, the object and the field
    ├── ProxierError               a mode failed to program the kernel; carries the failing lines
    └── CheckError                 a graded check could not run

Third-party errors (CalledProcessError, NetlinkError, OSError) are translated where they are
raised, in kplab.cluster.netns.run() and the modes' apply(), never further up.
"""

from __future__ import annotations


class KplabError(Exception):
    """Base of every error kplab raises on purpose; str(e) is meant for a person."""


class EnvironmentProblem(KplabError):
    """The machine lacks something the lab needs (root, a tool, a kernel feature)."""


class LabError(KplabError):
    """A lab cannot be created, found, locked or removed as asked."""


class ManifestError(KplabError):
    """A manifest is wrong; the message names file, object and field."""

    def __init__(self, message: str, *, source: str = "", obj: str = "", field: str = "") -> None:
        where = ": ".join(p for p in (source, obj, field) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.source, self.obj, self.field = source, obj, field


class ProxierError(KplabError):
    """A mode could not program the kernel; `lines` holds the input the kernel refused."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []


class CheckError(KplabError):
    """A graded check could not be run (not: the check failed)."""
