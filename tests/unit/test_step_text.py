"""A step-through names the message it released: its type, its record (as a connection), its peer."""

from __future__ import annotations

from engine.core import Engine
from engine.rows import key_text, step_text
from engine.rules import default_rules
from tests.unit.engine_packets import C1, S1, TcpFlow


def test_a_released_record_message_reads_as_type_record_and_peer() -> None:
    owner = Engine("n1", default_rules())
    for p in TcpFlow(C1, S1, 40000, 5001).handshake():
        owner.process(p, 1.0, 2)
    (rec,) = owner.store.records()
    msg = {"peer": "n2", "type": "records", "seq": 7, "trigger": "state-modified", "records": 3,
           "key": rec.key.hex(), "owner": "n1", "version": rec.version, "deleted": False}
    text = step_text(msg)
    assert text.startswith("records (state-modified): 3 records, tcp ")
    assert f"{C1}:40000" in text and f"{S1}:5001" in text
    assert text.endswith(f"of n1 v{rec.version} and 2 more to n2")


def test_other_messages_and_keys_that_are_no_connection() -> None:
    assert step_text({"peer": "n3", "type": "view", "seq": 2}) == "view to n3"
    assert key_text(b"sess") == b"sess".hex()
