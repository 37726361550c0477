"""SDP at the text level: the parts of what Chrome/Element send that the WebRTC leg handles
itself, around its WebRTC stack.

- Validation of untrusted SDP (size, line syntax, an audio m-line, ICE and DTLS
  attributes), with :class:`~bridge.media.errors.SdpError` naming what is wrong.
- Reduction of an offer to its first audio m-section, so the stack never sees video or data
  sections (BUNDLE groups are trimmed to match); the answer is then rebuilt with every other
  m-section rejected (port 0, ``a=inactive``, left out of BUNDLE), in the offer's order,
  as RFC 8829 (JSEP) and RFC 8843 (BUNDLE) expect.
- RFC 4733 ``telephone-event`` lines, which aiortc neither offers nor answers.

Lines are kept as they are; only the lines named here are added or removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bridge.media.errors import SdpError

MAX_SDP_BYTES = 64 * 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: Payload types tried first for the telephone-event lines of our own offers (Asterisk and
#: most PBXes use 101; 110 is what Chrome uses for the 48 kHz one).
PREFERRED_EVENT_PT = {8000: 101, 16000: 102, 48000: 110}

_LINE = re.compile(r"^[a-z]=")
_MLINE = re.compile(r"^m=([a-z]+) ([0-9]{1,5})(?:/[0-9]+)? ([A-Za-z0-9/]+)((?: [^ ]+)+)$")
_RTPMAP = re.compile(r"^([0-9]{1,3}) ([^/ ]+)/([0-9]+)(?:/[0-9]+)?$")
_ICE_SESSION_ATTRS = ("ice-ufrag", "ice-pwd", "fingerprint", "setup")


@dataclass
class MediaSection:
    """One m-section: its m= line first, then its other lines, unchanged."""

    lines: list[str]

    @property
    def _m(self) -> re.Match[str]:
        m = _MLINE.match(self.lines[0])
        if m is None:  # checked by parse(); only a caller's own edit can break it
            raise SdpError(f"malformed m-line: {self.lines[0][:80]!r}")
        return m

    @property
    def kind(self) -> str:
        return self._m.group(1)

    @property
    def port(self) -> int:
        return int(self._m.group(2))

    @property
    def proto(self) -> str:
        return self._m.group(3)

    @property
    def fmt(self) -> list[str]:
        return self._m.group(4).split()

    def attrs(self, name: str) -> list[str]:
        """Values of ``a=name:value`` lines (``""`` for a flag ``a=name``)."""
        return attr_values(self.lines[1:], name)

    def attr(self, name: str) -> str | None:
        values = self.attrs(name)
        return values[0] if values else None

    @property
    def mid(self) -> str | None:
        return self.attr("mid")

    @property
    def direction(self) -> str:
        for line in self.lines[1:]:
            if line[2:] in DIRECTIONS and line.startswith("a="):
                return line[2:]
        return "sendrecv"

    def rtpmaps(self) -> dict[int, tuple[str, int]]:
        """Payload type → (lower-case encoding name, clock rate); static types included."""
        out: dict[int, tuple[str, int]] = dict(STATIC_PAYLOAD_TYPES)
        for value in self.attrs("rtpmap"):
            m = _RTPMAP.match(value.strip())
            if m:
                out[int(m.group(1))] = (m.group(2).lower(), int(m.group(3)))
        return out

    def codecs(self) -> list[tuple[int, str, int]]:
        """(payload type, name, clock rate) in m-line order, for the known ones."""
        maps = self.rtpmaps()
        out = []
        for f in self.fmt:
            if f.isdigit() and int(f) in maps:
                name, rate = maps[int(f)]
                out.append((int(f), name, rate))
        return out

    def telephone_events(self) -> dict[int, int]:
        """Payload type → clock rate of the section's ``telephone-event`` formats."""
        return {pt: rate for pt, name, rate in self.codecs() if name == "telephone-event"}

    def candidates(self) -> list[str]:
        """The ``candidate:...`` strings of the section's ``a=candidate`` lines."""
        return ["candidate:" + v for v in self.attrs("candidate")]

    def text(self) -> str:
        return "".join(line + "\r\n" for line in self.lines)


#: RFC 3551 static payload types that may appear without an rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("pcmu", 8000),
    8: ("pcma", 8000),
    9: ("g722", 8000),
    13: ("cn", 8000),
}


@dataclass
class SessionDescription:
    session: list[str]
    media: list[MediaSection] = field(default_factory=list)

    def attrs(self, name: str) -> list[str]:
        return attr_values(self.session, name)

    def text(self) -> str:
        return "".join(line + "\r\n" for line in self.session) + "".join(
            m.text() for m in self.media
        )

    def ice_credentials(self, index: int) -> tuple[str | None, str | None]:
        """(ufrag, pwd) of m-section ``index``, media level first, then session level."""
        sec = self.media[index]
        ufrag = sec.attr("ice-ufrag") or next(iter(self.attrs("ice-ufrag")), None)
        pwd = sec.attr("ice-pwd") or next(iter(self.attrs("ice-pwd")), None)
        return ufrag, pwd


def attr_values(lines: list[str], name: str) -> list[str]:
    out = []
    prefix = f"a={name}"
    for line in lines:
        if line.startswith(prefix):
            rest = line[len(prefix) :]
            if rest.startswith(":"):
                out.append(rest[1:])
            elif rest == "":
                out.append("")
    return out


def parse(text: object, what: str = "SDP") -> SessionDescription:
    """Split an SDP into session lines and m-sections, checking the syntax of each line."""
    if not isinstance(text, str):
        raise SdpError(f"{what} is not a string but {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SDP_BYTES:
        raise SdpError(f"{what} is {size} bytes, over the {MAX_SDP_BYTES // 1024} KiB limit")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError(f"{what} does not start with v=0")
    sdp = SessionDescription(session=[])
    for number, line in enumerate(lines, start=1):
        if not _LINE.match(line) or any(ord(c) < 32 and c != "\t" for c in line):
            raise SdpError(f"{what} line {number} is not a 'x=value' line: {line[:60]!r}")
        if line.startswith("m="):
            m = _MLINE.match(line)
            if m is None or int(m.group(2)) > 65535:
                raise SdpError(f"{what} line {number} is a malformed m-line: {line[:80]!r}")
            if m.group(1) in ("audio", "video") and not all(
                f.isdigit() and int(f) < 128 for f in m.group(4).split()
            ):
                raise SdpError(f"{what} line {number} has a bad payload type: {line[:80]!r}")
            sdp.media.append(MediaSection([line]))
        elif sdp.media:
            sdp.media[-1].lines.append(line)
        else:
            sdp.session.append(line)
    return sdp


def find_audio(sdp: SessionDescription, what: str = "SDP") -> int:
    """Index of the first usable audio m-section, or :class:`SdpError` saying why none is."""
    audio = [i for i, m in enumerate(sdp.media) if m.kind == "audio"]
    if not audio:
        kinds = ", ".join(m.kind for m in sdp.media) or "none"
        raise SdpError(f"{what} has no audio m-line (m-lines: {kinds})")
    usable = [i for i in audio if sdp.media[i].port != 0]
    if not usable:
        raise SdpError(f"{what} has only rejected (port 0) audio m-lines")
    index = usable[0]
    sec = sdp.media[index]
    if "RTP/SAVP" not in sec.proto:
        raise SdpError(f"{what} audio m-line uses {sec.proto}, not DTLS-SRTP (UDP/TLS/RTP/SAVPF)")
    if not sec.mid:
        raise SdpError(f"{what} audio m-line has no a=mid")
    ufrag, pwd = sdp.ice_credentials(index)
    if not ufrag or not pwd:
        raise SdpError(f"{what} audio m-line has no a=ice-ufrag/a=ice-pwd")
    if not (sec.attrs("fingerprint") or sdp.attrs("fingerprint")):
        raise SdpError(f"{what} audio m-line has no a=fingerprint (DTLS-SRTP is required)")
    if not sec.attrs("rtcp-mux"):
        raise SdpError(f"{what} audio m-line has no a=rtcp-mux (required by WebRTC)")
    if not sec.codecs():
        raise SdpError(f"{what} audio m-line names no codec it describes")
    return index


def audio_only(sdp: SessionDescription, index: int) -> str:
    """The SDP with only m-section ``index``; groups keep only its mid."""
    mid = sdp.media[index].mid
    session = []
    for line in sdp.session:
        if line.startswith("a=group:"):
            semantic, *mids = line[len("a=group:") :].split()
            kept = [m for m in mids if m == mid]
            if kept:
                session.append(" ".join([f"a=group:{semantic}", *kept]))
            continue
        session.append(line)
    return SessionDescription(session, [sdp.media[index]]).text()


def rejected_section(offered: MediaSection, accepted: MediaSection) -> MediaSection:
    """A rejected (port 0) answer to ``offered``; ICE/DTLS lines copied from ``accepted``
    so that stacks which check them on every m-section (aiortc does) accept it too."""
    fmt = offered.fmt[:1] or ["0"]
    lines = [f"m={offered.kind} 0 {offered.proto} {' '.join(fmt)}", "c=IN IP4 0.0.0.0"]
    for name in _ICE_SESSION_ATTRS:
        lines += [f"a={name}:{v}" for v in accepted.attrs(name)]
    if offered.mid is not None:
        lines.append(f"a=mid:{offered.mid}")
    lines.append("a=inactive")
    if offered.kind in ("audio", "video"):
        lines.append("a=rtcp-mux")
        lines += [f"a=rtpmap:{v}" for v in offered.attrs("rtpmap") if v.split(" ")[0] == fmt[0]]
    return MediaSection(lines)


def full_answer(offer: SessionDescription, index: int, answer_text: str) -> SessionDescription:
    """Rebuild an answer to the whole ``offer`` from an answer to its audio section alone."""
    answer = parse(answer_text, "local answer")
    if len(answer.media) != 1:
        raise SdpError(f"local answer has {len(answer.media)} m-sections, expected 1")
    audio = answer.media[0]
    answer.media = [
        audio if i == index else rejected_section(sec, audio) for i, sec in enumerate(offer.media)
    ]
    return answer


def add_telephone_events(section: MediaSection, events: dict[int, int]) -> None:
    """Add ``telephone-event`` formats (payload type → clock rate) to an audio section."""
    new = {pt: rate for pt, rate in events.items() if str(pt) not in section.fmt}
    if not new:
        return
    m = section._m
    fmt = " ".join([*section.fmt, *(str(pt) for pt in new)])
    section.lines[0] = f"m={m.group(1)} {m.group(2)} {m.group(3)} {fmt}"
    extra = []
    for pt, rate in new.items():
        extra += [f"a=rtpmap:{pt} telephone-event/{rate}", f"a=fmtp:{pt} 0-15"]
    last = max(
        (i for i, line in enumerate(section.lines) if line.startswith(("a=rtpmap:", "a=fmtp:"))),
        default=len(section.lines) - 1,
    )
    section.lines[last + 1 : last + 1] = extra


def free_payload_types(section: MediaSection, rates: list[int]) -> dict[int, int]:
    """Payload types for ``telephone-event`` at ``rates`` that the section does not use."""
    used = {int(f) for f in section.fmt if f.isdigit()}
    out: dict[int, int] = {}
    for rate in rates:
        pt = PREFERRED_EVENT_PT.get(rate, 101)
        candidates = [pt, *range(96, 128)]
        pt = next(p for p in candidates if p not in used)
        used.add(pt)
        out[pt] = rate
    return out
