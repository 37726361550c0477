"""What the pool tells the controller: call events, incoming calls and messages, link states.

These are the public types of :mod:`.pool` (the IPC types stay internal). A call's event
stream ends with exactly one terminal event: :class:`Ended` (the SIP call ended, with the
final status) or :class:`Failed` (its worker died, or the pool stopped without a SIP ending).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Ringing:
    """A provisional response (180 Ringing, 181, 182, 183 Session Progress) to our INVITE."""

    status: int
    reason: str


@dataclass(frozen=True)
class EarlyMedia:
    """Our INVITE got an SDP answer before 200 (usually 183): audio flows before answer."""

    status: int


@dataclass(frozen=True)
class Answered:
    """The call is up (200 OK / ACK); ``codec`` like ``PCMU/8000``."""

    codec: str


@dataclass(frozen=True)
class Dtmf:
    """A key pressed on the SIP side (RFC 4733 telephone-event or SIP INFO)."""

    digit: str
    method: str


@dataclass(frozen=True)
class MediaChanged:
    """The call's WebRTC leg (Matrix side) changed: connected, failed, held, resumed."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class Held:
    """The SIP call's hold changed. ``by="local"``: our hold (re-INVITE a=sendonly, from
    ``CallHandle.hold`` or the Matrix side holding) or resume took effect; ``by="remote"``:
    the PBX put us on hold (a=sendonly/inactive) or resumed. Audio towards Matrix is silence
    while the PBX sends nothing."""

    by: Literal["local", "remote"]
    on: bool


@dataclass(frozen=True)
class Transferred:
    """The PBX side transferred the call: the same call (same handle, same Matrix call) now
    talks to ``to`` (``Name <sip:…>`` or ``sip:…``). ``kind`` "refer": blind transfer (REFER
    to us; we called the target and ended the old dialog once it answered); "replaces":
    attended transfer (an INVITE with Replaces took the old dialog's place)."""

    to: str
    kind: Literal["refer", "replaces"] = "refer"
    sip_call_id: str = ""


@dataclass(frozen=True)
class Ended:
    """The call is over. ``status`` is the final SIP status (200 after a BYE, 486, 404, 487
    after CANCEL …); ``by`` says who ended it."""

    status: int
    reason: str
    by: Literal["local", "remote"]


@dataclass(frozen=True)
class Failed:
    """The call is lost without a SIP ending: its worker died (or the pool stopped)."""

    reason: str


CallEvent = (
    Ringing | EarlyMedia | Answered | Dtmf | MediaChanged | Held | Transferred | Ended | Failed
)
TERMINAL = (Ended, Failed)


@dataclass(frozen=True)
class AudioStats:
    """A call's audio frames (20 ms each) in each direction when its media closed: frames
    delivered, and frames lost (dropped from a full buffer, or missing when the other side's
    clock wanted one: an underrun, filled with silence)."""

    to_matrix_frames: int
    to_matrix_lost: int
    to_sip_frames: int
    to_sip_lost: int

    @staticmethod
    def pct(lost: int, frames: int) -> float:
        return 100.0 * lost / (frames + lost) if frames + lost else 0.0


@dataclass(frozen=True)
class IncomingCallInfo:
    """Who calls whom, from an inbound INVITE."""

    company: str
    caller_user: str
    caller_display: str
    caller_uri: str
    #: P-Asserted-Identity URI when the PBX sent one ("" otherwise).
    asserted_identity: str
    #: Request-URI user (trunk mode: what the PBX dialled, e.g. ``alice=example.org``).
    target: str
    to_user: str
    #: ``ip:port`` the INVITE came from.
    source: str
    sip_call_id: str


@dataclass(frozen=True)
class IncomingMessage:
    company: str
    from_user: str
    from_display: str
    from_uri: str
    to_user: str
    content_type: str
    text: str
    source: str


@dataclass(frozen=True)
class MessageResult:
    """Final answer of the PBX to our MESSAGE (408 when nothing answered)."""

    status: int
    reason: str

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class LinkStatus:
    company: str
    state: Literal["registering", "registered", "failed", "unregistered"]
    status: int = 0
    reason: str = ""
    expires_s: int = 0
    retry_in_s: float = 0.0
    worker: int = 0


@dataclass(frozen=True)
class ExtensionStatus:
    """An extension's state as its company's PBX reports it (``presence`` on): ``busy``
    while it has a call (ringing included), ``online`` when idle, ``offline`` when the PBX
    says so or the subscription to it failed or ended (``reason``, e.g. "404 Not Found")."""

    company: str
    extension: str
    state: Literal["online", "busy", "offline"]
    reason: str = ""


@dataclass(frozen=True)
class AudioReport:
    """The strongest frequency of the probed audio and its level (dB full scale)."""

    freq_hz: float
    level_dbfs: float
    frames: int


@dataclass(frozen=True)
class WorkerInfo:
    index: int
    pid: int
    alive: bool
    calls: int
    max_calls: int
    restarts: int
    #: (transport, host, port) the worker listens on.
    transports: tuple[tuple[str, str, int], ...]
