"""After a refused broken config: the good file is in place and the service still proxies."""

import json

import testinfra

host = testinfra.get_host("podman://mol-xray_bad_config-d12")


def test_service_still_running():
    assert host.service("xray").is_running
    assert "127.0.0.1:1080" in host.check_output("ss -Hltn")


def test_config_on_disk_is_the_good_one():
    cfg = json.loads(host.file("/usr/local/etc/xray/config.json").content_string)
    assert cfg["outbounds"][0]["streamSettings"]["network"] == "tcp"
    assert cfg["outbounds"][0]["streamSettings"]["security"] == "tls"


def test_no_stray_temp_files():
    # The config and the CA its TLS outbound verifies lab-egress with; no temporary file left.
    assert sorted(host.check_output("ls -A /usr/local/etc/xray").split()) == ["config.json", "tls-ca.crt"]


def test_still_proxies():
    out = host.run("curl -sS --fail --max-time 10 --socks5-hostname 127.0.0.1:1080 http://10.213.30.40:8080/")
    assert out.rc == 0 and "abroad-endpoint lab-egress" in out.stdout
