"""WebSocket close codes (RFC 6455, section 7.4.1) as this server uses them."""

NORMAL = 1000
"""Done: the session ended, or the peer closed normally."""
GOING_AWAY = 1001
"""This server is shutting down (reconnect to resume)."""
BAD_DATA = 1007
"""A message that is not what its type says (invalid UTF-8 in a text frame)."""
POLICY = 1008
"""Not allowed: an access rule or a limit refused the peer."""
TOO_BIG = 1009
"""A message over ``max_message_bytes``."""
SERVER_ERROR = 1011
"""The session crashed."""
TRY_AGAIN_LATER = 1013
"""Full, or too slow to keep up: reconnect later (a listener with ``lastSeq``)."""
