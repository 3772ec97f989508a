"""Where the project lives: its public git address is set here and only here.

`setup.py` (the package's url), the notebooks' install cells and their "Open
in Colab" badges are derived from `REPOSITORY`. While it is empty (the
project is not published yet) an install cell says what to set instead of
failing inside pip. After changing it, run
`python experiments/notebooks/build_notebooks.py --refresh_headers`.
"""

from __future__ import annotations

import re

# The repository's https address, e.g. "https://github.com/OWNER/attractor_jax".
REPOSITORY = ""
BRANCH = "main"

_GITHUB = re.compile(r"^https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?$")


def colab_url(notebook: str, repository: str = REPOSITORY,
              branch: str = BRANCH) -> str:
  """Colab's address of `notebook` (a path inside the repository), or "" when
  the repository is unset or not on GitHub (Colab opens GitHub notebooks)."""
  match = _GITHUB.match(repository or "")
  if not match:
    return ""
  return (f"https://colab.research.google.com/github/{match.group(1)}/blob/"
          f"{branch}/{notebook}")
