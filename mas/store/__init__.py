"""Message, state and correlation storage behind one interface.

``Store`` (in ``base``) is the contract every backend keeps; ``MemoryStore`` is
the in-process backend. Orchestration code (router, sessions, servicer) uses only
the ``Store`` interface; only the composition layer picks a backend.
"""

from .base import (
    Correlation as Correlation,
)
from .base import (
    DeadLetter as DeadLetter,
)
from .base import (
    EnqueueItem as EnqueueItem,
)
from .base import (
    InFlight as InFlight,
)
from .base import (
    QueuedMessage as QueuedMessage,
)
from .base import (
    QueueFullError as QueueFullError,
)
from .base import (
    Store as Store,
)
from .base import (
    StoreLimits as StoreLimits,
)
from .memory import MemoryStore as MemoryStore
