"""Models on the machine: downloads from the catalog into a disk cache under a byte budget.

``download`` streams one file (resumed with an HTTP Range request, checked by
SHA-256); ``cache`` keeps the files, the cross-process locks and the LRU
eviction; ``manager`` puts them together for a job: each model it needs that
the catalog knows is on disk before the job runs, downloaded once however many
of the machine's worker processes want it at the same time.
"""

from machine.models.cache import ModelCache
from machine.models.manager import ModelManager, Preparing, manager_from_env

__all__ = ["ModelCache", "ModelManager", "Preparing", "manager_from_env"]
