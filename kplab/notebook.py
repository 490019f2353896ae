"""The lab from a notebook: errors as one line, the CLI's warnings shown, the lab back after a restart.

Importing kplab inside IPython calls `install()`:

* a KplabError raised by a `lab.*` call is shown as the one line it is meant to be
  ("LabError: replicas 500: a lab allows 0 to 200 per Deployment"), not a traceback through the
  worker thread and `concurrent.futures`; the cell still fails, so "Run All" stops there;
* the verbs' KplabWarnings (what `kplab apply` prints as `warning:`, e.g. a Service whose
  selector matches no pod) are printed under the cell as that same one line, every time.

After a kernel restart, `resume()` gives the names of the notebook's first cell back (`lab`,
`N1`, the imports...) by running that cell with its `start(...)` replaced by attaching to the
lab as it is: nothing is reset.  Re-running the first cell itself still starts over.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kplab.errors import KplabError, KplabWarning, LabError

LABS = Path(__file__).resolve().parents[1] / "labs"
_installed = False


def _shell() -> Any:
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def one_line(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> list[str]:
    """IPython's custom exception handler for KplabError: the message, in red, as the cell's error."""
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)
    return stb


def install(shell: Any = None) -> bool:
    """Register the one-line errors in the running IPython (no-op outside IPython); True if installed."""
    global _installed
    shell = shell or _shell()
    if shell is None:
        return False
    if KplabError not in (getattr(shell, "custom_exceptions", ()) or ()):
        shell.set_custom_exc((KplabError,), one_line)
    if not _installed:
        import warnings

        warnings.simplefilter("always", KplabWarning)  # as the CLI: after every command, not once
        previous = warnings.showwarning

        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if issubclass(category, KplabWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
    _installed = True
    return True


def first_code_cell(notebook: str) -> str:
    """The first code cell of labs/<notebook>.ipynb (`03` or `03-iptables`)."""
    found = sorted(LABS.glob(f"{notebook}*.ipynb")) or sorted(LABS.glob(f"{notebook.split('-')[0]}-*.ipynb"))
    if not found:
        raise LabError(f"no notebook {notebook!r} in {LABS}")
    cells = json.loads(found[0].read_text()).get("cells", [])
    code = next((c for c in cells if c.get("cell_type") == "code"), None)
    src = code.get("source", "") if code else ""
    return "".join(src) if isinstance(src, list) else str(src)


def resume(notebook: str | None = None, lab: str | None = None) -> Any:
    """After a kernel restart: the lab as you left it, and the first cell's names again (nothing reset)."""
    from kplab.grading.course import last_notebook
    from kplab.grading.netns import current_lab
    from kplab.lab import Lab

    name = lab or current_lab()
    try:
        attached = Lab.attach(name)
    except KplabError:
        raise LabError(f"no lab {name!r} is up to resume: run the notebook's first cell, which builds it") from None
    nb = notebook or last_notebook(name)
    shell = _shell()
    if shell is not None:
        code = first_code_cell(nb)
        import re

        replaced = re.sub(r"\bstart\(\s*(['\"])[^'\"]*\1[^)]*\)", "__kplab_attach__()", code)
        if replaced != code:
            shell.user_ns["__kplab_attach__"] = lambda: attached
            shell.ex(shell.transform_cell(replaced))
            shell.user_ns.pop("__kplab_attach__", None)
    st = attached.status()
    print(f"lab {name!r} as you left it: mode {st['mode']}, {st['pods']} pods, {st['services']} Services "
          f"(last started for {nb}); the first cell starts over")
    return attached


install()
