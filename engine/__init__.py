"""The gateway engine: a pure packet-screening core, and the node process that binds it to NFQUEUE."""
