"""A module that takes long to import: a process worker preloading it misses a short start
deadline."""

import time

time.sleep(30)
