"""Deriving each worker's config: ports per worker, RTP slices, which worker registers."""

from __future__ import annotations

import pytest

from bridge.sip.config import LinkConfig, ListenAddress, SipConfig


def _links() -> tuple[LinkConfig, ...]:
    return (
        LinkConfig(company="acme", mode="register", domain="a.example", username="m",
                   password="p"),
        LinkConfig(company="bolt", mode="register", domain="b.example", username="m",
                   password="p"),
        LinkConfig(company="corp", mode="trunk", domain="c.example",
                   allowed_sources=("203.0.113.5", "10.1.0.0/16")),
    )


def test_worker_ports_rtp_slices_and_home_workers() -> None:
    cfg = SipConfig(
        listen=(ListenAddress("udp", "0.0.0.0", 5060), ListenAddress("tcp", "0.0.0.0", 5060),
                ListenAddress("tls", "0.0.0.0", 5061)),
        port_step=10, workers=3, rtp_ports=(20000, 20299), links=_links(),
    )
    cfg.validate()
    w = [cfg.for_worker(i) for i in range(3)]
    assert [la.port for la in w[2].listen] == [5080, 5080, 5081]
    assert [(x.rtp_port_start, x.rtp_port_count) for x in w] == [
        (20000, 100), (20100, 100), (20200, 100)]
    assert w[0].registers == ("acme",)
    assert w[1].registers == ("bolt",)
    assert w[2].registers == ()
    assert cfg.home_worker("corp") == 0  # trunk calls arrive at worker 0


def test_explicit_worker_ports_and_ephemeral_ports() -> None:
    cfg = SipConfig(listen=(ListenAddress("udp", "127.0.0.1", 0),), workers=2)
    assert [cfg.for_worker(i).listen[0].port for i in range(2)] == [0, 0]
    cfg = SipConfig(listen=(ListenAddress("udp", "127.0.0.1", 5060),), workers=2,
                    worker_ports=(7000, 7100))
    assert [cfg.for_worker(i).listen[0].port for i in range(2)] == [7000, 7100]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"calls_per_worker": 5}, "calls_per_worker must be 1..4"),
        ({"rtp_ports": (20000, 20010)}, "too small"),
        ({"codecs": ("opus",)}, "codec 'opus'"),
        ({"listen": (ListenAddress("tcp", "0.0.0.0", 5060), ListenAddress("tls", "0.0.0.0", 5061)),
          "workers": 2}, "raise sip.port_step"),
        ({"links": (LinkConfig(company="x", mode="trunk", domain="d"),)}, "allowed_sources"),
        ({"links": (LinkConfig(company="x", mode="trunk", domain="d",
                               allowed_sources=("nope",)),)}, "not an IP or CIDR"),
        ({"links": (LinkConfig(company="x", mode="register", domain="d"),)}, "username"),
    ],
)
def test_bad_config_is_named(changes: dict[str, object], message: str) -> None:
    cfg = SipConfig(**{"workers": 1, **changes})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_auto_workers_is_at_least_one() -> None:
    assert SipConfig(workers="auto").worker_count() >= 1
