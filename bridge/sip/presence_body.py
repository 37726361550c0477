"""What a NOTIFY body says about an extension: online, busy or offline.

Two event packages carry an extension's state:

- ``dialog`` (RFC 4235, ``application/dialog-info+xml``; what Asterisk hints and BLF keys
  use): one ``<dialog>`` per call of the extension, each with a ``<state>`` of trying,
  proceeding, early, confirmed or terminated. Any dialog not terminated means the extension
  is busy ("on a call", ringing included); none, or all terminated, means online. A
  ``state="partial"`` document only lists the dialogs that changed, so the dialogs seen are
  kept per subscription (:class:`DialogTracker`); a ``full`` one replaces them.
- ``presence`` (RFC 3863 PIDF, ``application/pidf+xml``, with RFC 4480 RPID activities):
  an ``on-the-phone`` or ``busy`` activity means busy; else any tuple with basic ``open``
  means online; else offline. Asterisk's PIDF has no activities: an extension in use is
  ``closed`` with the note "On the phone" (or "Ringing", "On hold"), so those notes of a
  closed document also mean busy.

Bodies come from the network: a document with a DOCTYPE (entity tricks) or that is not
well-formed XML is refused (:class:`BadBody`), and nothing here raises anything else.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal

ExtState = Literal["online", "busy", "offline"]

DIALOG_INFO_TYPE = "application/dialog-info+xml"
PIDF_TYPE = "application/pidf+xml"

#: Asterisk's PIDF notes for an extension in use (its PIDF carries no RPID activity).
_BUSY_NOTES = frozenset({"on the phone", "ringing", "on hold"})
_BUSY_ACTIVITIES = frozenset({"on-the-phone", "busy"})


class BadBody(ValueError):
    """The body is not a document of the expected kind."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _parse(body: str, root_name: str) -> ET.Element:
    if "<!DOCTYPE" in body.upper() or "<!ENTITY" in body.upper():
        raise BadBody("document type declarations are not accepted")
    try:
        # no DTD got this far, so no entity can expand (what defusedxml would refuse)
        root = ET.fromstring(body.strip())  # noqa: S314
    except ET.ParseError as e:
        raise BadBody(f"not well-formed XML: {e}") from None
    if _local(root.tag) != root_name:
        raise BadBody(f"root element is <{_local(root.tag)}>, not <{root_name}>")
    return root


@dataclass
class DialogTracker:
    """The dialogs of one ``dialog`` subscription, as its NOTIFYs (full or partial) tell."""

    version: int = -1
    dialogs: dict[str, str] = field(default_factory=dict)

    def update(self, body: str) -> ExtState:
        """Apply one dialog-info document; the extension's state after it."""
        root = _parse(body, "dialog-info")
        try:
            version = int(root.get("version", "-1"))
        except ValueError:
            version = -1
        if 0 <= version <= self.version:
            return self.state  # a repeat or an older document (RFC 4235 section 4.1)
        full = root.get("state", "full").strip().lower() != "partial"
        seen: dict[str, str] = {}
        for i, dialog in enumerate(x for x in root if _local(x.tag) == "dialog"):
            key = dialog.get("id") or dialog.get("call-id") or f"#{i}"
            state = next((_text(x) for x in dialog if _local(x.tag) == "state"), "")
            seen[key] = state.strip().lower() or "terminated"
        if full:
            self.dialogs = seen
        else:
            self.dialogs.update(seen)
        self.dialogs = {k: v for k, v in self.dialogs.items() if v != "terminated"}
        self.version = version
        return self.state

    @property
    def state(self) -> ExtState:
        return "busy" if self.dialogs else "online"


def _text(node: ET.Element) -> str:
    return "".join(node.itertext())


def pidf_state(body: str) -> ExtState:
    """The state a PIDF document (RPID activities understood) gives."""
    root = _parse(body, "presence")
    basics = [_text(x).strip().lower() for x in root.iter() if _local(x.tag) == "basic"]
    activities = {_local(x.tag) for parent in root.iter() if _local(parent.tag) == "activities"
                  for x in parent}
    notes = {_text(x).strip().lower() for x in root.iter() if _local(x.tag) == "note"}
    if activities & _BUSY_ACTIVITIES:
        return "busy"
    if "open" in basics:
        return "online"
    if notes & _BUSY_NOTES:
        return "busy"
    return "offline"
