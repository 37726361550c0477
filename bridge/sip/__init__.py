"""The SIP side of the bridge: a pool of pjsua2 worker processes and its IPC protocol.

Controller side (runs in the bridge's asyncio loop):

- :mod:`.pool` — :class:`~.pool.WorkerPool`: starts the workers, heartbeats, replaces a dead
  one, routes calls and messages, reports a dead worker's calls as failed.
- :mod:`.workerproc` — one worker process seen from the controller (spawn, requests, death).
- :mod:`.forkserver` — the process the workers are forked from, which imports their code
  once so that they share it (``python -m bridge.sip.forkserver``, one per pool).
- :mod:`.admission` — refuses new calls while the machine's CPU is nearly full
  (``min_idle_cpu``).
- :mod:`.handles` — :class:`~.handles.CallHandle`: one call's event stream and actions.
- :mod:`.events` — the public event and result types.
- :mod:`.config` — :class:`~.config.SipConfig` (what the pool is given) and the per-worker
  :class:`~.config.WorkerConfig` sent over IPC.
- :mod:`.ipc` — the typed messages (JSON, length-prefixed, over a socketpair).

Worker side (forked by the fork server, :func:`.worker.serve`):

- :mod:`.worker` — the process: asyncio loop for IPC and per-call audio.
- :mod:`.endpoint` — the pjsua2 owner thread (Endpoint, start-up, teardown, routing).
- :mod:`.transports`, :mod:`.links` (accounts, registration), :mod:`.calls`,
  :mod:`.messages` (SIP MESSAGE), :mod:`.audio` (port pool, buffers, CallAudio),
  :mod:`.framecopy`, :mod:`.pjlog`, :mod:`.pjlib`, :mod:`.sourcefilter`, :mod:`.routing`,
  :mod:`.digest` (inbound digest auth), :mod:`.sipmsg`, :mod:`.presence` (extension
  states by SUBSCRIBE, with :mod:`.presence_body` and :mod:`.notify_observer`).

Design decisions
----------------

Ports. Every worker has its own SIP listeners: worker *i* listens on each configured port
+ ``i * port_step`` (or on ``worker_ports[i]``; port 0 = any free port, for tests), and on its
own slice of the RTP port range. A replacement worker takes over the same index, so the same
ports. One SIP front door for many workers (Kamailio's dispatcher in front) is a later step;
until then:

Registration and inbound calls. Each ``register``-mode link has one *home* worker
(register links are dealt round-robin over the workers: link *k* → worker ``k % N``). Only
the home worker sends REGISTER, so the PBX sends the company's inbound calls and messages to
that worker's Contact (which carries ``;bridge-link=<company>``). Trunk-mode PBXes are
pointed at worker 0's address. Inbound capacity per company is therefore one worker's (four
calls) until the dispatcher exists; the fifth gets 503.

Outbound. Every worker has an Account for every link (same credentials, no REGISTER except on
the home worker), so a call leaves from whichever worker has a free slot (least loaded
first). Messages leave from the home worker (any worker if it is down).

Who may call us. A request is accepted only if the routing rules of :mod:`.routing` give it a
company (Contact parameter, trunk source address, or account match; a register link without
``allowed_sources`` admits only its registrar's addresses); otherwise 403, answered by a pjsip
module registered through ctypes (:mod:`.sourcefilter`) before pjsua sees it. A company with
``inbound_auth`` also needs digest credentials on INVITE and MESSAGE (:mod:`.digest`: 401 with
a stateless challenge, 403 for wrong ones), answered by the same module. It answers 503 too
when all of a worker's call slots are busy. Per-company limits are the pool's (486).

Audio. Per call, :class:`~.audio.CallAudio` inside the worker yields and takes 20 ms PCM
frames at the conference clock rate; a WebRTC leg in the same worker will pump through it.
``PlayTone``/``ProbeAudio`` use the same path for the operator audio check and the tests.
"""
