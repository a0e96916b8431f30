"""What a Connection tells its shell (sans-IO): typed events, as h11 and aioquic do.

Rules:
- The shell feeds bytes (get_buffer()/buffer_updated()), then calls
  Connection.next_event() until it returns None, handling each event, and then sends
  Connection.data_to_send(). Output is not an event: like h11's and aioquic's
  data_to_send(), it is asked for after each round and is empty when there is nothing.
- The shell also drains the events when the connection's wakeup callback runs: another
  connection (a task management function of another nexus, a session reinstatement) or
  connection_lost() changed this one outside a receive. The wakeup only says "look";
  the events say what.
- TasksReady carries the connection's own queues, live: the shell pops every task from
  `tasks` (admitted in CmdSN order, RFC 7143 3.2.2.1) and then from `data_in` (tasks the
  shell has whose Data-Out is now all in) before it asks for the next event. The queues
  are live so that a task the connection aborts before the shell took it (an abort
  during the same burst) is taken out, not handed over. One TasksReady object per
  connection, reused: nothing is allocated per command.
- TaskSetChanged: tasks left an LU's task set outside a submit (aborted, connection
  lost, a Data-Out error): the shell pumps the task sets of the session's target.
- CloseWanted: the connection is to end once its output is sent (Logout, a protocol
  error, a failed login, reinstatement, TARGET COLD RESET); given once.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from target.scsi.task import ScsiTask


class TasksReady:
    """Tasks for their LUs' task sets: `tasks` new ones, `data_in` ones now with data."""

    __slots__ = ("tasks", "data_in")

    def __init__(self, tasks: deque[ScsiTask], data_in: deque[ScsiTask]) -> None:
        self.tasks = tasks
        self.data_in = data_in


class TaskSetChanged:
    """Tasks left an LU's task set: what waited for them may start now."""

    __slots__ = ()


class CloseWanted:
    """Close the transport once the output is sent."""

    __slots__ = ()


TASKSET_CHANGED = TaskSetChanged()
CLOSE_WANTED = CloseWanted()

Event = TasksReady | TaskSetChanged | CloseWanted
