"""circuit-tracer's own viewer opens a relp_lens graph.

circuit-tracer 0.5.0's ``local_server.serve`` serves its own, unmodified ``index.html`` and a relp_lens export
(``{slug}.json`` + ``graph-metadata.json``) on localhost; headless Chromium loads it with no script error and
draws every node. The page loads d3 and jetpack from transformer-circuits.pub and dagre/pako from unpkg.com,
which this machine cannot reach: ``make viewer`` (tests/viewer/build_mirror.sh) builds offline copies from npm
(d3 7.9.0, d3-jetpack 2.1.0 plus a small shim for what transformer-circuits.pub's jetpack build adds, dagre
0.8.5, pako 2.1.0), served here over local HTTPS, and Chromium maps both hosts to that server.
"""

import functools
import http.server
import json
import socket
import ssl
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

import relp_lens
from relp_lens.circuits.edges import attribute_edges
from relp_lens.circuits.graph_export import to_circuit_tracer, write_circuit_tracer
from relp_lens.circuits.io_edges import attribute_io_edges
from helpers import CHROMIUM_FLAGS, find_chromium, js_errors, same_length_rows, tiny_llama

CHROMIUM = find_chromium()
MIRROR = Path(__file__).resolve().parent.parent / "build" / "viewer-mirror"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mirror(tmp_path):
    """The npm-built copies of the viewer's remote scripts over HTTPS (self-signed); yields the port."""
    if not (MIRROR / "2025/attribution-graphs/static_js/lib/d3.js").is_file():
        pytest.fail(f"{MIRROR} is missing: run `make viewer` (tests/viewer/build_mirror.sh)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(MIRROR)))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def graph_dir(tmp_path):
    """A full relp_lens graph (embedding, neuron and output nodes and edges) of a tiny model, exported."""
    model = tiny_llama()
    rows = same_length_rows(model)[:3]
    attr = relp_lens.attribute(model, rows, progress=False)
    circuit = relp_lens.select_top_k(attr, model, 10)
    circuit = attribute_edges(model, circuit, rows, progress=False)
    circuit = attribute_io_edges(model, circuit, rows, progress=False)
    tokens = model.to_tokens(rows[0]["clean_prefix"])[0].tolist()
    graph = to_circuit_tracer(circuit, attr.str_tokens[0], prompt=rows[0]["clean_prefix"], slug="tiny-agreement",
                              token_ids=tokens, output_label=" are", output_token=5, output_prob=0.6)
    out = tmp_path / "graphs"
    out.mkdir()
    write_circuit_tracer(out / "tiny-agreement.json", graph, title="tiny agreement")
    return out, graph


class _Count(HTMLParser):
    """Counts ``text.node`` elements (one per drawn graph node) and pinned-node boxes in a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.nodes = self.pinned = 0

    def handle_starttag(self, tag, attrs):
        cls = (dict(attrs).get("class") or "").split()
        self.nodes += tag == "text" and "node" in cls
        self.pinned += tag == "div" and "supernode-container" in cls


def _open(url: str, mirror_port: int) -> tuple[str, list[str]]:
    with tempfile.TemporaryDirectory(prefix="relp-chromium-") as profile:
        done = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
             f"--host-resolver-rules=MAP transformer-circuits.pub 127.0.0.1:{mirror_port}, "
             f"MAP unpkg.com 127.0.0.1:{mirror_port}", "--ignore-certificate-errors", "--dump-dom", url],
            capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_circuit_tracer_viewer_draws_a_relp_lens_graph(mirror, graph_dir):
    from circuit_tracer.frontend.local_server import serve

    data, graph = graph_dir
    port = _free_port()
    server = serve(data_dir=str(data), port=port)  # circuit-tracer's own server and its packaged index.html
    try:
        ids = [n["node_id"] for n in graph["nodes"]]
        pinned = [i for i in ids if not i.startswith("E_")][:3]
        base = f"http://localhost:{port}/index.html?slug=tiny-agreement"
        dom, console = _open(base, mirror)
        dom_pinned, console_pinned = _open(f"{base}&pinnedIds={','.join(pinned)}", mirror)
    finally:
        server.stop()
    assert js_errors(console) == [] and js_errors(console_pinned) == []
    count = _Count()
    count.feed(dom)
    assert count.nodes == len(graph["nodes"]), "the viewer did not draw every node"
    count = _Count()
    count.feed(dom_pinned)
    assert count.pinned == len(pinned)  # the subgraph panel (dagre layout) shows the pinned nodes
    assert json.loads((data / "graph-metadata.json").read_text())["graphs"][0]["slug"] == "tiny-agreement"


def test_without_the_mirror_the_page_fails(graph_dir):
    """The check can fail: offline, with no mirror, the viewer's first script error is caught."""
    from circuit_tracer.frontend.local_server import serve

    data, _ = graph_dir
    port = _free_port()
    server = serve(data_dir=str(data), port=port)
    try:
        dom, console = _open(f"http://localhost:{port}/index.html?slug=tiny-agreement", _free_port())
    finally:
        server.stop()
    assert any("d3 is not defined" in line for line in js_errors(console))
    count = _Count()
    count.feed(dom)
    assert count.nodes == 0
