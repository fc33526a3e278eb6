"""The topology's `schedules:`: when each fires (`firings`, pure) and who fires it (`leader`)."""
