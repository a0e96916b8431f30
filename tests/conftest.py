# The project's pytest plugin (target.testing.plugin: scsi_target and guest fixtures).
#
# Rule: it is loaded from here only while pytest does not load it itself as the installed
# distribution's `pytest11` entry point `scsi_target` (registering the same module twice
# is an error); with PYTEST_DISABLE_PLUGIN_AUTOLOAD set, entry points are not loaded.

import os
from importlib.metadata import entry_points

_AUTOLOADED = (not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
               and any(ep.value == "target.testing.plugin"
                       for ep in entry_points(group="pytest11")))

pytest_plugins = [] if _AUTOLOADED else ["target.testing.plugin"]
