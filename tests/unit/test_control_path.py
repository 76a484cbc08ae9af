"""A data directory whose control socket path is too long fails early, with the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.control import MAX_SOCKET_PATH_BYTES, ControlError, check_socket_path


def test_a_short_path_is_accepted_and_a_long_one_is_refused(tmp_path: Path) -> None:
    assert check_socket_path(tmp_path).name == "control.sock"
    deep = tmp_path / ("d" * MAX_SOCKET_PATH_BYTES)
    with pytest.raises(ControlError, match="shorter path") as refused:
        check_socket_path(deep)
    assert str(deep) in str(refused.value)
