"""Service discovery: who serves a name (static or Consul), registration, and balanced channels."""
