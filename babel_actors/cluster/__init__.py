"""Sessions shared by the nodes of a cluster (a ``shared`` store, e.g. Redis).

``ClusterSession`` (``session.py``) is a session as one node serves it: the same
``Room`` as a session served alone, fed by ``follower.py`` (the bus every node reads)
and, on the node that owns it, by a ``Pipeline`` (``ownership.py``).
"""

from babel_actors.cluster.session import ClusterSession

__all__ = ["ClusterSession"]
