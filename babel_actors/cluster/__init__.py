"""Sessions shared by the nodes of a cluster (a ``shared`` store, e.g. Redis).

``ClusterSession`` (``session.py``) is a session as one node serves it;
``ownership.py`` its owner's side (the pipeline and its relays); ``follower.py`` the
bus-reading side every node runs; ``members.py`` the members it adds to audiences;
``catchup.py`` the arithmetic of a joiner's missed finals.
"""

from babel_actors.cluster.session import ClusterSession

__all__ = ["ClusterSession"]
