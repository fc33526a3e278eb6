"""Event history: an exchange's log on a stream queue, read back, replayed and backfilled.

Pure decisions live in `select` (which events a read or a replay takes) and `event` (what a log
entry says); `reader` and `replay` are the thin I/O around them.
"""

from bus.history.event import HistoryEvent
from bus.history.reader import History
from bus.history.replay import Outcome, replay
from bus.history.select import Selection, parse_when

__all__ = ["History", "HistoryEvent", "Outcome", "Selection", "parse_when", "replay"]
