"""The lab: namespaces, links and firewall rules built from a lab spec, and the daemon that owns them."""
