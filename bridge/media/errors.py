"""Typed errors of the media layer (the WebRTC leg, its SDP handling, DTMF).

The call layer translates them once, at the edge, into a Matrix hangup reason or a SIP
response; each message is one line that says what was wrong with which input.
"""

from __future__ import annotations

from bridge.errors import BridgeError


class MediaError(BridgeError):
    """Base class of the media layer's errors."""


class SdpError(MediaError):
    """An SDP from the peer is malformed, too large, or has no usable audio m-line."""


class NegotiationError(MediaError):
    """A well-formed SDP cannot be used: no common codec, wrong signalling state, an ICE
    restart or a changed audio m-line in a renegotiation."""


class DtmfError(MediaError):
    """A DTMF request is invalid (unknown digit, bad duration) or DTMF was not negotiated."""


class LegClosedError(MediaError):
    """The leg was used after :meth:`close`."""
