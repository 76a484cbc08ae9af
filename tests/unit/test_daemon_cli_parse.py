"""A control client's bad argv is an error reply, never argparse's exit of the daemon."""

from __future__ import annotations

import pytest

from mesh.cli_net import run_in_daemon


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "--no-such-flag"], "unrecognized arguments|required"),
        (["put", "--data-dir", "d", "--tier", "L9", "--content", "x"], "invalid choice"),
        (["get", "-h"], "help"),
        ([], "required|COMMAND"),
    ],
)
async def test_bad_arguments_raise_value_error(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await run_in_daemon(None, argv, {}, "/")
