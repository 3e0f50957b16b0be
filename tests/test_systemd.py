"""deploy/systemd/sollol-proxy.service: what it promises (restart on failure, SIGTERM and time
to drain, reload by SIGHUP, configuration from /etc/sollol, a dynamic user in a read-only
system), and `systemd-analyze verify` accepts it without a warning where systemd is installed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sollol_proxy import server
from sollol_proxy.config.model import Config

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "sollol-proxy.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(UNIT.read_text())
    return parser


def _seconds(value: str) -> float:
    assert value.endswith("s") and value[:-1].isdigit(), value
    return float(value[:-1])


def test_it_restarts_on_failure_and_stops_by_draining() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "exec"  # the proxy sends no readiness notification
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    drain = Config().shutdown_grace + server.CUT_WRITE_S + server.CLOSE_S
    assert _seconds(service["TimeoutStopSec"]) > drain
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_it_reads_its_configuration_from_etc_sollol() -> None:
    service = _unit()["Service"]
    command = service["ExecStart"].split()
    assert command[0].endswith("/sollol-proxy") and command[1] == "-c"
    assert command[2] == f"/etc/{service['ConfigurationDirectory']}/sollol.yaml"
    assert service["EnvironmentFile"].startswith("-/etc/sollol/")  # optional: SOLLOL_* there
    # Batch jobs go to the state directory systemd makes for the dynamic user.
    assert service["Environment"] == f"SOLLOL_DATA_DIR=%S/{service['StateDirectory']}"


def test_it_runs_hardened() -> None:
    service = _unit()["Service"]
    assert service["DynamicUser"] == "yes" and service["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges"):
        assert service[key] == "yes", key
    assert service["CapabilityBoundingSet"] == ""  # 11434 needs no privilege
    assert service["RestrictAddressFamilies"].split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: the systemd package)")
    # verify checks that ExecStart exists: this environment's sollol-proxy stands in for
    # /opt/sollol-proxy's.
    executable = Path(sys.executable).parent / "sollol-proxy"
    unit = tmp_path / UNIT.name
    original = _unit()["Service"]["ExecStart"].split()[0]
    unit.write_text(UNIT.read_text().replace(original, str(executable)))
    checked = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == "" and checked.stdout.strip() == ""
