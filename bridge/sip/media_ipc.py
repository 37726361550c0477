"""IPC messages for the WebRTC leg that a worker runs beside each SIP call.

They live in their own module but in the same registry as :mod:`.ipc` (importing this module
registers them), so the pool and the worker both import it. Commands get a ``Reply`` whose
``value`` is the SDP where one is produced.
"""

from __future__ import annotations

from .ipc import _message


@_message
class WebrtcAnswer:
    """Answer the Matrix side's offer for this call (Matrix → PBX calls)."""

    req: int
    call: str
    offer_sdp: str
    #: JSON list of {urls, username, credential}
    ice_servers: str = "[]"


@_message
class WebrtcOffer:
    """Make an offer towards the Matrix side for this call (PBX → Matrix calls)."""

    req: int
    call: str
    ice_servers: str = "[]"


@_message
class WebrtcAccept:
    """The Matrix side's answer to our offer."""

    req: int
    call: str
    answer_sdp: str


@_message
class WebrtcCandidates:
    req: int
    call: str
    #: JSON list of {candidate, sdpMid, sdpMLineIndex}; candidate "" ends the list.
    candidates: str


@_message
class WebrtcRenegotiate:
    """A new offer from the Matrix side (hold, resume); the reply's value is our answer."""

    req: int
    call: str
    offer_sdp: str


@_message
class MediaState:
    """The WebRTC leg of a call connected, failed or was put on hold (worker → pool)."""

    call: str
    state: str  # connected | failed | held | resumed
    detail: str = ""


@_message
class AudioCounts:
    """A call's audio frame counts when its WebRTC leg closed (worker → pool)."""

    call: str
    to_matrix_frames: int
    to_matrix_lost: int
    to_sip_frames: int
    to_sip_lost: int


MEDIA_COMMANDS = (WebrtcAnswer, WebrtcOffer, WebrtcAccept, WebrtcCandidates, WebrtcRenegotiate)
