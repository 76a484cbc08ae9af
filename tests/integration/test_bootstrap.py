"""Networks without multicast: `memmesh run` finds peers from the join token's addresses.

The bridge floods no multicast to either host, so mDNS finds nothing; the joining node's
token carries the first node's signaling address, which static discovery probes (a sealed
"hello" on the signaling port) and the node then links to and replicates with.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests.integration import lan
except ModuleNotFoundError:  # tests/ is not a package: import lan.py from its folder
    sys.path.insert(0, str(Path(__file__).parent))
    import lan  # type: ignore[no-redef, import-not-found, unused-ignore]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[lan.Cluster]:
    with lan.open_cluster(request, tmp_path) as c:
        yield c


def test_bootstrap_addresses_in_the_token_link_nodes_without_multicast(
    cluster: lan.Cluster,
) -> None:
    a, b = cluster.add("a"), cluster.add("b")
    for node in (a, b):
        cluster.net.block_multicast(node.host)
    a.init()
    token = lan.memmesh(
        "token", "--data-dir", a.data_dir, "--bootstrap", f"{a.host.address}:{lan.PORT}"
    ).stdout.strip()
    b.init(token)
    a.start()
    b.start()
    a.wait_up()
    b.wait_up()
    cluster.wait_linked([a, b], 30.0)
    a.put("L1", "via-bootstrap", "found without multicast", priority="critical")
    lan.wait_for("the item on b", lambda: b.has("via-bootstrap"), 20.0, context=cluster.tails)
    log = b.log()
    assert f"bootstrap peer {a.node_id}" in log
    assert "discovered" not in log and "discovered" not in a.log(), "mDNS was not blocked"
    cluster.stop_all()
