"""Print kplab's runtime requirements (dependencies + the `lab` extra) from pyproject.toml, one a line;
with a second argument (an extra's name, e.g. `hub`), that extra's requirements only.

The image installs these in a layer of their own, before kplab's source is copied, so editing the
source does not reinstall JupyterLab; `make wheelhouse` downloads the same list for offline builds.
"""

import sys
import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
if len(sys.argv) > 2:
    print("\n".join(project["optional-dependencies"][sys.argv[2]]))
else:
    print("\n".join([*project["dependencies"], *project["optional-dependencies"]["lab"], "setuptools>=68"]))
