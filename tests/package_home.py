"""Where the deepid2_core these tests import lives: the source tree of an
editable install, or site-packages (CI installs with `pip install .`, and the
source tree then has no built `_cpu`). A test that starts Python in a
subprocess runs it with cwd=PACKAGE_HOME, so that it imports the same package."""
from pathlib import Path

import deepid2_core

PACKAGE_HOME = str(Path(deepid2_core.__file__).resolve().parents[1])
