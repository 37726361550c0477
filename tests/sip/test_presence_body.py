"""What NOTIFY bodies say about an extension: dialog-info (full, partial, versions) and PIDF
(RPID activities, Asterisk's notes); hostile documents are refused."""

from __future__ import annotations

import pytest

from bridge.sip.presence_body import BadBody, DialogTracker, pidf_state

ENTITY = "sip:101@127.0.0.1"
DIALOG_NS = "urn:ietf:params:xml:ns:dialog-info"


def dialog_info(version: int, *dialogs: tuple[str, str]) -> str:
    inner = "".join(f'<dialog id="{i}" direction="recipient"><state>{s}</state></dialog>'
                    for i, s in dialogs)
    return (f'<?xml version="1.0"?>\n<dialog-info xmlns="{DIALOG_NS}" version="{version}" '
            f'state="full" entity="{ENTITY}">{inner}</dialog-info>')


def pidf(basic: str, activity: str = "", note: str = "") -> str:
    person = (f'<dm:person id="p1"><rpid:activities><rpid:{activity}/></rpid:activities>'
              f'</dm:person>') if activity else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
            'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
            f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{ENTITY}">'
            f'<tuple id="t1"><status><basic>{basic}</basic></status></tuple>'
            f'{f"<note>{note}</note>" if note else ""}{person}</presence>')


def test_dialog_info_partial_documents_and_versions():
    t = DialogTracker()
    assert t.update(dialog_info(3, ("a", "early"))) == "busy"
    partial = (f'<dialog-info xmlns="{DIALOG_NS}" version="4" state="partial" '
               f'entity="{ENTITY}"><dialog id="b"><state>confirmed</state></dialog>'
               '</dialog-info>')
    assert t.update(partial) == "busy" and set(t.dialogs) == {"a", "b"}
    ended_a = partial.replace('version="4"', 'version="5"').replace(
        '<dialog id="b"><state>confirmed', '<dialog id="a"><state>terminated')
    assert t.update(ended_a) == "busy" and set(t.dialogs) == {"b"}
    assert t.update(dialog_info(4)) == "busy"  # older than the last: ignored
    assert t.update(dialog_info(6, ("b", "terminated"))) == "online"


@pytest.mark.parametrize(("body", "state"), [
    (pidf("open"), "online"),
    (pidf("open", "busy"), "busy"),
    (pidf("closed", "on-the-phone"), "busy"),
    (pidf("closed", note="On the phone"), "busy"),  # Asterisk: in use is closed + this note
    (pidf("closed", note="Unavailable"), "offline"),
])
def test_pidf_states(body: str, state: str):
    assert pidf_state(body) == state


@pytest.mark.parametrize("body", [
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><dialog-info>&a;</dialog-info>',
    "<dialog-info><dialog>",
    f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{ENTITY}"/>',
])
def test_unacceptable_dialog_info_is_refused(body: str):
    with pytest.raises(BadBody):
        DialogTracker().update(body)
