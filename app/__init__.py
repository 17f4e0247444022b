"""The syncwall command line and the Textual console (clients of the lab daemon)."""
