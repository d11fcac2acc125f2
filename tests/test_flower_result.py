"""How the Flower rehearsal reads the ServerApp's ``result.json`` (no network: the file alone)."""
import json

import pytest

from federation.errors import FederationError
from federation.transports.flower.launch import _check_result


def test_a_finished_server_app_passes(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"ok": True}))
    _check_result(tmp_path / "result.json", 0, tmp_path / "logs")


@pytest.mark.parametrize("content, says", [
    (None, "the Flower run ended (flwr run exit 1) without a result; see"),
    ("{not json", "result.json is unreadable (JSONDecodeError)"),
    ("[1, 2]", "ServerApp failed: not a JSON object: [1, 2]"),
    (json.dumps({"ok": False, "error": "DataError: data.root /x does not exist"}),
     "ServerApp failed: DataError: data.root /x does not exist (traceback in"),
])
def test_a_server_app_that_did_not_finish_is_one_line_saying_why(tmp_path, content, says):
    if content is not None:
        (tmp_path / "result.json").write_text(content)
    with pytest.raises(FederationError) as err:
        _check_result(tmp_path / "result.json", 1, tmp_path / "logs")
    assert says in str(err.value) and "\n" not in str(err.value), str(err.value)
