"""Settings that change while a service runs: their schema (settings), how Consul KV overrides
them (kv), and how a change reaches the interceptors that enforce it (enforce)."""
