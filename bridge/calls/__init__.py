"""Bridged calls: Matrix call state per call, tied to a SIP call in a worker.

`manager` runs the two directions, `outcomes` maps SIP endings to Matrix ones (and back),
`records` keeps a call record per call, `media` names what the controller needs from a
worker's call (SIP control plus the WebRTC leg that lives in the same worker).
"""
