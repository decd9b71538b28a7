"""Print the pinned requirements from pyproject.toml, so pip installs exactly those.

`python tools/requirements.py` prints the runtime pins; `... dev` adds the dev extra.
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
lines = list(project["dependencies"])
for extra in sys.argv[1:]:
    lines += project["optional-dependencies"][extra]
print("\n".join(lines))
