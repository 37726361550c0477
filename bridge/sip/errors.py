"""Typed errors of the SIP side.

Each carries a short machine ``code`` so that it survives the trip over IPC: the worker sends
``Reply(ok=False, code=..., error=...)`` and the pool raises the same class again with
:func:`error_from_code`.
"""

from __future__ import annotations

from bridge.errors import BridgeError


class SipError(BridgeError):
    """Base class; ``code`` names the kind of failure on the wire."""

    code = "sip_error"


class UnknownCompany(SipError):
    """No PBX link is configured for that company."""

    code = "unknown_company"


class NoSuchCall(SipError):
    """The call id is unknown here (never existed, or already ended)."""

    code = "no_such_call"


class CallStateError(SipError):
    """The call is in a state where that action makes no sense (e.g. answering an outbound call)."""

    code = "bad_state"


class InvalidTarget(SipError):
    """An extension, number or user name that cannot be put into a SIP URI."""

    code = "invalid_target"


class CapacityExceeded(SipError):
    """No worker (or not this worker) can take one more call."""

    code = "capacity"


class Overloaded(CapacityExceeded):
    """The machine's CPU is too busy to carry one more call (``sip.min_idle_cpu``)."""

    code = "overloaded"


class CompanyBusy(SipError):
    """The company's own concurrent-call limit is reached."""

    code = "company_busy"


class MessageTooLarge(SipError):
    """A SIP MESSAGE body above the configured size limit."""

    code = "too_large"


class WorkerDied(SipError):
    """The worker handling the request died before answering."""

    code = "worker_died"


class WorkerUnavailable(SipError):
    """No worker is running (pool not started, stopping, or all being replaced)."""

    code = "no_worker"


class PjsipFailure(SipError):
    """pjsua2 refused the operation; the message carries pjsua2's reason."""

    code = "pjsip"


_BY_CODE: dict[str, type[SipError]] = {
    cls.code: cls
    for cls in (
        SipError,
        UnknownCompany,
        NoSuchCall,
        CallStateError,
        InvalidTarget,
        CapacityExceeded,
        Overloaded,
        CompanyBusy,
        MessageTooLarge,
        WorkerDied,
        WorkerUnavailable,
        PjsipFailure,
    )
}


def error_from_code(code: str, message: str) -> SipError:
    """The exception the worker raised, rebuilt on the controller side."""
    return _BY_CODE.get(code, SipError)(message)
