"""The one exception tree of kplab.

    KplabError                     anything kplab reports to a person: one readable line
    ├── EnvironmentProblem         not root, a missing tool or kernel feature (says how to fix it)
    ├── LabError                   lab lifecycle: exists already, not found, locked, half-built
    ├── ManifestError              a bad manifest: names the file, the object and the field
    ├── CommandError               a program kplab ran (in a namespace) failed or hung; carries its output
    ├── ProxierError               a mode failed to program the kernel; carries the failing lines
    └── CheckError                 a graded check could not run

KplabWarning (a UserWarning) is what the CLI prints as `warning: ...`: accepted, but probably
not what was meant (a selector that matches no pod, an unreachable externalIP).

Third-party errors (CalledProcessError, NetlinkError, OSError) are translated where they are
raised, in kplab.cluster.run.run() (CommandError) and the modes' apply() (ProxierError; a
command a sync ran that failed is a ProxierError too, kplab.proxy.base.Proxier.sync), never further up.
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


class CommandError(KplabError):
    """A program run by kplab (`lab.exec`, a tool in a namespace) failed or did not finish; `lines` is its output."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []


class ProxierError(KplabError):
    """A mode could not program the kernel; `lines` holds the input the kernel refused."""

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []


class CheckError(KplabError):
    """A graded check could not be run (not: the check failed)."""


class KplabWarning(UserWarning):
    """Accepted, but probably not what was meant; the Python API shows what the CLI prints as warnings."""
