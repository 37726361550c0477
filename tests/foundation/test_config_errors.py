"""Broken configs stop the bridge with one line naming the key or path, and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
homeserver: {address: "http://127.0.0.1:8008", domain: example.org}
appservice:
  address: "http://127.0.0.1:29360"
  database: "sqlite:bridge.db"
  as_token: aaaaaaaaaaaaaaaa
  hs_token: bbbbbbbbbbbbbbbb
"""


def check(cfg_text: str | None, tmp_path: Path, *extra: str) -> tuple[int, str]:
    cfg = tmp_path / "config.yaml"
    if cfg_text is not None:
        cfg.write_text(cfg_text)
        cfg.chmod(0o600)
    res = subprocess.run([sys.executable, "-m", "bridge", "-c", str(cfg), "--check-config", *extra],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return res.returncode, res.stderr


def assert_one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_good_config_passes(tmp_path: Path) -> None:
    code, err = check(GOOD, tmp_path)
    assert code == 0, err
    assert (tmp_path / "bridge.db").exists()  # relative to the config's folder


def test_missing_required_key(tmp_path: Path) -> None:
    code, err = check(GOOD.replace("  as_token: aaaaaaaaaaaaaaaa\n", ""), tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "appservice.as_token" in line and "missing" in line


def test_unknown_key(tmp_path: Path) -> None:
    code, err = check(GOOD + "bridge: {usernme_template: 'x_{name}'}\n", tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "bridge.usernme_template" in line and "unknown key" in line


def test_wrong_type(tmp_path: Path) -> None:
    code, err = check(GOOD.replace('address: "http://127.0.0.1:29360"',
                                   'address: "http://127.0.0.1:29360"\n  port: twelve'), tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "appservice.port" in line and "integer" in line


def test_wrong_type_deep_in_a_company(tmp_path: Path) -> None:
    company = ("companies:\n  acme:\n    name: Acme\n    main_line: '100'\n"
               "    pbx: {registrar: 'sip:127.0.0.1', username: u, password: p, transport: carrier-pigeon}\n")
    code, err = check(GOOD + company, tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "companies.acme.pbx.transport" in line and "udp" in line


def test_wrong_type_in_inbound_auth(tmp_path: Path) -> None:
    company = ("companies:\n  acme:\n    name: Acme\n    main_line: '100'\n"
               "    pbx: {registrar: 'sip:127.0.0.1', username: u, password: p,\n"
               "          inbound_auth: {username: pbx, password: {nested: s3cretpw}}}\n")
    code, err = check(GOOD + company, tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "companies.acme.pbx.inbound_auth.password" in line and "expected a string" in line
    assert "s3cretpw" not in line


def test_unreadable_file(tmp_path: Path) -> None:
    code, err = check(None, tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert str(tmp_path / "config.yaml") in line and "not found" in line
    if os.geteuid() != 0:  # root reads anything; a missing file stands in for it then
        cfg = tmp_path / "config.yaml"
        cfg.write_text(GOOD)
        cfg.chmod(0)
        code, err = check(None, tmp_path)
        assert code == 2 and "permission denied" in assert_one_line(err)


def test_invalid_yaml(tmp_path: Path) -> None:
    code, err = check(GOOD + "bridge: [unclosed\n", tmp_path)
    assert code == 2
    assert "invalid YAML" in assert_one_line(err)


def test_unreachable_database(tmp_path: Path) -> None:
    text = GOOD.replace("sqlite:bridge.db", "postgres://bridge:hunter2secret@127.0.0.1:1/bridge")
    code, err = check(text, tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "appservice.database" in line and "127.0.0.1:1" in line
    assert "hunter2secret" not in err


def test_sqlite_in_a_missing_folder(tmp_path: Path) -> None:
    code, err = check(GOOD.replace("sqlite:bridge.db", "sqlite:/nonexistent/dir/bridge.db"),
                      tmp_path)
    assert code == 2
    assert "/nonexistent/dir/bridge.db" in assert_one_line(err)


def test_generate_tokens_must_be_generated_first(tmp_path: Path) -> None:
    code, err = check(GOOD.replace("aaaaaaaaaaaaaaaa", "generate"), tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "appservice.as_token" in line and "-g" in line


@pytest.mark.parametrize("text", ["", "- just\n- a list\n"])
def test_empty_or_not_a_mapping(tmp_path: Path, text: str) -> None:
    code, err = check(text, tmp_path)
    assert code == 2
    assert_one_line(err)


def test_config_is_never_rewritten_by_a_normal_start(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(GOOD)
    before = cfg.read_bytes(), cfg.stat().st_mtime_ns
    code, err = check(None, tmp_path)
    assert code == 0, err
    assert (cfg.read_bytes(), cfg.stat().st_mtime_ns) == before


def test_warning_when_others_can_read_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(GOOD)
    cfg.chmod(0o644)
    res = subprocess.run([sys.executable, "-m", "bridge", "-c", str(cfg), "--check-config"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0
    assert "readable by other users" in res.stderr and "chmod 600" in res.stderr
    assert "aaaaaaaaaaaaaaaa" not in res.stderr + res.stdout


def test_port_taken_exits_2_without_hanging(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        text = GOOD.replace('address: "http://127.0.0.1:29360"',
                            f'address: "http://127.0.0.1:{port}"\n  port: {port}')
        text += "sip: {listen: {udp: '127.0.0.1:0', tcp: '127.0.0.1:0'}, workers: 1}\n"
        cfg = tmp_path / "config.yaml"
        cfg.write_text(text)
        cfg.chmod(0o600)
        res = subprocess.run([sys.executable, "-m", "bridge", "-c", str(cfg)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert f"127.0.0.1:{port}" in res.stderr.splitlines()[-1]


def test_min_idle_cpu_out_of_range(tmp_path: Path) -> None:
    code, err = check(GOOD + "sip: {min_idle_cpu: 95}\n", tmp_path)
    assert code == 2
    line = assert_one_line(err)
    assert "sip.min_idle_cpu" in line and "90" in line
