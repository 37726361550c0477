"""Real SIP peers for the test suite, all on 127.0.0.1 with ports picked at run time:

- :class:`~tests.peers.kamailio.Kamailio`: a registrar/proxy with digest auth (own config,
  usrloc in memory, static routes and trunks, queried with kamcmd on its own socket).
- :class:`~tests.peers.sipp.Sipp`: sipp scenarios (echo/reject/ringing UAS, call/MESSAGE
  UAC, MESSAGE sink), each in its own folder with message traces.
- :class:`~tests.peers.baresip.Baresip`: a headless registered extension driven over
  ctrl_tcp, playing a WAV and recording what it receives.
- :class:`~tests.peers.rtp.RtpPeer`: bare RTP (PCMU tone, RFC 4733 DTMF) without SIP.
- :mod:`tests.peers.ports`: free ports, ``send_udp`` and ``sip_options``.

Every process has its log and PID file in its work folder and is stopped by its PID only
(leftovers at interpreter exit too). Typical fixtures::

    @pytest.fixture(scope="module")
    def pbx(tmp_path_factory):
        with Kamailio(tmp_path_factory.mktemp("pbx"), users={"matrix": "secret",
                                                             "101": "pw101"}) as k:
            yield k

    @pytest.fixture
    def ext101(pbx, tmp_path):
        with Baresip(tmp_path, "101", "pw101", registrar=pbx.address, tone_hz=800) as b:
            b.wait_registered()
            yield b

    def test_busy(pbx, tmp_path):
        uas = Sipp.uas_reject(tmp_path, 486).start()
        pbx.set_route("102", uas.address)      # 102 is "registered" at sipp
        ...                                    # the bridge calls 102 through pbx
        uas.wait_ok(10)
"""
