"""The mesh console: one web page showing the running mesh live (topology, golden signals, traces, runs)."""
