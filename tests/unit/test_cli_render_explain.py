"""`kplab render` and `kplab explain` from the command line, without a lab (no root)."""

from __future__ import annotations

from pathlib import Path

from kplab.cli import main

DEFAULT = Path(__file__).resolve().parents[2] / "kplab" / "manifests" / "default.yaml"


def kplab(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_render_allocates_what_a_manifest_leaves_to_the_api_server(capsys):
    """Issue 20 item 6: `render iptables -f default.yaml` printed no Service rules and no warning."""
    rc, out, err = kplab(capsys, "render", "iptables", "-f", str(DEFAULT), "--service-cidr", "10.100.0.0/16")
    assert rc == 0
    assert '"default/web:http has no endpoints" -m tcp -p tcp -d 10.100.216.130 --dport 80 -j REJECT' in out
    assert "service/web: no clusterIP in" in err and "allocated 10.100.216.130 as `kplab up` would" in err
    assert "deployment/web: its pods are not in the input" in err
    rc, out, err = kplab(capsys, "render", "nftables", "-f", str(DEFAULT))
    assert rc == 0 and "10.96.216.130 . tcp . 80" in out and "allocated 10.96.216.130" in err


def test_explain_reads_stdin(capsys, monkeypatch, tmp_path):
    """Issue 20 item 12: `kplab exec node-1 -- iptables-save | kplab explain -` was not supported."""
    import io

    from kplab.cli.views import render_text

    dump = render_text("iptables", [DEFAULT])
    monkeypatch.setattr("sys.stdin", io.StringIO(dump))
    rc, out, err = kplab(capsys, "explain", "-")
    assert rc == 0 and "default/web:http" in out, err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    rc, out, err = kplab(capsys, "explain", "-")
    assert rc == 1 and err.startswith("kplab: <stdin>: empty") and err.count("\n") == 1
